#!/usr/bin/env bash
# Check the TransformerLens patch series in upstream/patches from a clean temporary directory:
# fetch transformer-lens 4.3.0's sdist with pip, apply the patches, install the patched library and
# tl_moe in a throwaway venv, run TransformerLens's own MoE test files plus the new tests (a failure
# counts only if the same test passes on the unpatched source), tl_moe's tests of the upstream
# path, and upstream/compare.py (patched hooks == tl_moe's bit for bit, logits == Hugging Face's).
# Exit 0 only if everything holds; the last line is a one-line summary. KEEP=1 keeps the directory.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
WORK=$(mktemp -d -t tl_upstream_XXXXXX)
START=$SECONDS
LOG=$WORK/check.log
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

finish() {  # finish STATUS MESSAGE
    echo "check.sh: $2 ($((SECONDS - START)) s)"
    exit "$1"
}
run() {  # run DESCRIPTION COMMAND...: log the command's output; stop on failure
    echo "== $1" | tee -a "$LOG"
    if ! "${@:2}" >>"$LOG" 2>&1; then
        tail -n 40 "$LOG"
        finish 1 "FAILED at: $1"
    fi
}

run "fetch transformer-lens 4.3.0 (sdist)" \
    "$PY" -m pip download transformer-lens==4.3.0 --no-deps --no-binary :all: -d "$WORK/sdist"
run "unpack" tar xzf "$WORK/sdist/transformer_lens-4.3.0.tar.gz" -C "$WORK"
PRISTINE=$WORK/pristine
TL=$WORK/transformer_lens-4.3.0
cp -r "$TL" "$PRISTINE"
PATCHES=("$REPO"/upstream/patches/*.patch)
run "apply ${#PATCHES[@]} patches" git -C "$TL" apply --verbose "${PATCHES[@]}"

run "venv" "$PY" -m venv "$WORK/venv"
V=$WORK/venv/bin
C=(-c "$REPO/upstream/constraints.txt")
run "install torch (CPU)" "$V/pip" install -q "${C[@]}" torch==2.13.0
run "install patched transformer-lens" "$V/pip" install -q "${C[@]}" "$TL"
run "install tl_moe (--no-deps) and test tools" "$V/pip" install -q "${C[@]}" pytest scikit-learn scipy \
    pyarrow matplotlib tabulate pyyaml pysbd
run "install tl_moe" "$V/pip" install -q --no-deps -e "$REPO"

# TransformerLens's own MoE-related test files, and the new ones (the patch adds two).
cd "$TL" || finish 1 "no $TL"
mapfile -t TESTS < <(ls tests/unit/*.py tests/unit/*/*.py tests/unit/*/*/*.py tests/integration/*/*.py \
    | grep -iE '/test_[^/]*(moe|expert|mixtral|gpt_oss|deepseek|routing)[^/]*\.py$' | sort)
PYTEST=("$V/python" -m pytest -q -p no:cacheprovider -o addopts= -rfE)
echo "== TransformerLens MoE tests: ${#TESTS[@]} files" | tee -a "$LOG"
"${PYTEST[@]}" "${TESTS[@]}" >"$WORK/patched.txt" 2>&1
grep -E '^(FAILED|ERROR) ' "$WORK/patched.txt" | awk '{print $2}' | sort -u >"$WORK/failing.txt"
TL_SUMMARY=$(tail -n 1 "$WORK/patched.txt" | tr -d '=' | sed 's/^ *//; s/ in [0-9.]*s.*//')
NEW_FAILING=$(grep -c 'test_moe_expert_hooks' "$WORK/failing.txt")
REGRESSIONS=0
if [ -s "$WORK/failing.txt" ]; then
    # The same tests on the unpatched source (python -m pytest imports the package of the cwd).
    mapfile -t FAILING < <(grep -v 'test_moe_expert_hooks' "$WORK/failing.txt")
    if [ ${#FAILING[@]} -gt 0 ]; then
        (cd "$PRISTINE" && "${PYTEST[@]}" "${FAILING[@]}" >"$WORK/pristine.txt" 2>&1)
        grep -E '^(FAILED|ERROR) ' "$WORK/pristine.txt" | awk '{print $2}' | sort -u >"$WORK/pristine_failing.txt"
        comm -23 <(printf '%s\n' "${FAILING[@]}" | sort -u) "$WORK/pristine_failing.txt" >"$WORK/regressions.txt"
        REGRESSIONS=$(wc -l <"$WORK/regressions.txt")
        echo "   ${#FAILING[@]} failing here; on the unpatched source $(wc -l <"$WORK/pristine_failing.txt") of them fail too" | tee -a "$LOG"
    fi
fi
echo "   $TL_SUMMARY" | tee -a "$LOG"
if [ "$NEW_FAILING" -gt 0 ] || [ "$REGRESSIONS" -gt 0 ]; then
    grep -h 'test_moe_expert_hooks' "$WORK/failing.txt"; cat "$WORK/regressions.txt" 2>/dev/null
    finish 1 "FAILED: $NEW_FAILING new tests fail, $REGRESSIONS TransformerLens tests regress"
fi
PREEXISTING=$(wc -l <"$WORK/failing.txt")

cd "$REPO" || finish 1 "no $REPO"
run "tl_moe tests on the patched TransformerLens" "$V/python" -m pytest -q -p no:cacheprovider \
    tests/test_upstream_hooks.py tests/test_models.py
TLMOE_SUMMARY=$(grep -E '[0-9]+ passed' "$LOG" | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ in [0-9.]*s.*//')
echo "== compare on tiny random models" | tee -a "$LOG"
"$V/python" upstream/compare.py 2>&1 | grep -vE 'Loading weights|Writing model' | tee -a "$LOG" >"$WORK/compare.txt"
COMPARE_RC=${PIPESTATUS[0]}
grep -E '^(ok|FAIL) ' "$WORK/compare.txt"
[ "$COMPARE_RC" = 0 ] || finish 1 "FAILED: $(tail -n 1 "$WORK/compare.txt")"

finish 0 "OK: ${#PATCHES[@]} patches apply to transformer-lens 4.3.0; TL MoE tests ($TL_SUMMARY): 0 regressions, \
$PREEXISTING fail unpatched too; tl_moe ($TLMOE_SUMMARY); $(tail -n 1 "$WORK/compare.txt" | sed 's/^compare: //')"
