# Sourced by the launch scripts: shell words shown to people.

shown() {  # a command line for people: words with shell syntax in single quotes
  local a flag out=() q="'"
  for a; do
    flag=""
    [[ $a =~ ^(--[A-Za-z0-9_.-]+=|[A-Za-z_][A-Za-z0-9_]*=) ]] && flag=${BASH_REMATCH[0]} && a=${a#"$flag"}
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]*$ ]]; then out+=("$flag$a"); else out+=("$flag'${a//$q/$q\\$q$q}'"); fi
  done
  echo "${out[*]}"
}
