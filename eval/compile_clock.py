"""`CompileClock`: the compilations a benchmark paid for, from JAX's own monitoring events."""

from __future__ import annotations


class CompileClock:
  """Sums the trace, lowering and XLA compile seconds JAX reports (`jax.monitoring`) while active.

  Exact even on a loaded machine, unlike "warm-up minus a timed run". `compiles` counts backend
  compilations (one per program and shape).
  """
  _BACKEND = "/jax/core/compile/backend_compile_duration"
  _EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
             "/jax/core/compile/jaxpr_to_mlir_module_duration", _BACKEND)

  def __init__(self):
    self.seconds, self.compiles = 0.0, 0

  def _listener(self, event: str, duration: float, **unused_kwargs) -> None:
    if event in self._EVENTS:
      self.seconds += duration
      self.compiles += event == self._BACKEND

  def __enter__(self) -> CompileClock:
    import jax  # pylint: disable=g-import-not-at-top
    jax.monitoring.register_event_duration_secs_listener(self._listener)
    return self

  def __exit__(self, *unused_exc) -> None:
    import jax  # pylint: disable=g-import-not-at-top
    jax.monitoring.unregister_event_duration_listener(self._listener)
