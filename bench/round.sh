# Sourced by the bench scripts: starts a coordinator on a round config and waits for its endpoint.
#   start_coordinator CONFIG DATA_DIR LOG   sets COORD (its pid), PORT and KEY
start_coordinator() {
  $C coordinator serve --config "$1" --threads 1 > "$3" 2>&1 &
  COORD=$!
  for _ in $(seq 1 200); do [ -f "$2/endpoint.json" ] && break; sleep 0.1; done
  PORT=$(python3 -c "import json;print(json.load(open('$2/endpoint.json'))['port'])")
  KEY=$(python3 -c "import json;print(json.load(open('$2/endpoint.json'))['coordinator_key'])")
}
