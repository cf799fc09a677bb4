"""`main.py` whose process sends itself a SIGTERM after a given step (preemption tests only).

  python tests/preempt_main.py --sigterm_at_step=1 --sigterm_process=1 <main.py flags>

The signal is real (`os.kill`), sent from a training hook so that it arrives at a known step;
in a multi-process job only `--sigterm_process` receives it, as when one TPU VM of a pod is
told it will be preempted.
"""

import dataclasses
import os
import signal
import types

from absl import app, flags

import main  # the launcher's flags and main()

_AT = flags.DEFINE_integer("sigterm_at_step", None, "Send SIGTERM after this step.")
_PROCESS = flags.DEFINE_integer("sigterm_process", 0, "The process that receives it.")


def _with_sigterm_hook(module):
  from retrieval_jax import recipes  # pylint: disable=g-import-not-at-top,unused-import
  from retrieval_jax.recipes import base  # pylint: disable=g-import-not-at-top

  class SigtermAt(base.Hook):

    def after_step(self, step, state):
      import jax  # pylint: disable=g-import-not-at-top

      if step == _AT.value and jax.process_index() == _PROCESS.value:
        os.kill(os.getpid(), signal.SIGTERM)

  wrapper = types.ModuleType(module.__name__)
  wrapper.__dict__.update(module.__dict__)

  def build(*args, **kwargs):
    recipe = module.build(*args, **kwargs)
    return dataclasses.replace(recipe, hooks=[*recipe.hooks, SigtermAt()])

  wrapper.build = build
  return wrapper


def patched_main(argv):
  from retrieval_jax import recipes  # pylint: disable=g-import-not-at-top

  original = recipes.get
  recipes.get = lambda name: _with_sigterm_hook(original(name))
  main.main(argv)


if __name__ == "__main__":
  app.run(patched_main)
