# Sourced by the table queues (chang_table.sh, sgopt_table.sh): `run NAME CMD...` runs CMD
# unless $R/NAME.done exists, logging to $R/NAME.log; on success it appends "NAME<TAB>seconds"
# to $T and leaves NAME.done, else it appends "NAME<TAB>FAILED". R and T are the caller's.
# Runs named in $SKIP (space-separated) are left for another time: SKIP="a b" bash queue.sh.
pending() { [ ! -f $R/$1.done ] && [[ " $SKIP " != *" $1 "* ]]; }
run() {
  name=$1; shift
  pending $name || return 0
  start=$(date +%s)
  "$@" > $R/$name.log 2>&1 && { echo -e "$name\t$(( $(date +%s) - start ))" >> $T; touch $R/$name.done; } || echo -e "$name\tFAILED" >> $T
}
