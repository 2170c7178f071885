# Sourced by the curve scripts: adapter_files PATTERN sets `adapters` (--adapters FILE …) and
# `qualities` ("1,2,…") from the files PATTERN names, with Q standing for the quality (1–5).
adapter_files() {
    local quality file found=()
    adapters=()
    for quality in 1 2 3 4 5; do
        file="${1//Q/$quality}"
        if [ -f "$file" ]; then adapters+=(--adapters "$file"); found+=("$quality"); fi
    done
    qualities="$(IFS=,; echo "${found[*]}")"
}
