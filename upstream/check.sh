#!/usr/bin/env bash
# Check the TransformerLens patch series in upstream/patches from a clean temporary directory:
# fetch transformer-lens 4.3.0's sdist with pip, apply the patches, install the patched library and
# tl_moe in a throwaway venv, run the new tests (every one collected must pass), TransformerLens's
# own MoE test files (a failure counts only if the same test passes on the unpatched source; a
# pytest run that ends abnormally fails the check), tl_moe's tests of the upstream path, and
# upstream/compare.py (patched hooks == tl_moe's bit for bit, a consistency check; logits ==
# Hugging Face's, the independent check). Exit 0 only if everything holds; the last line is a
# one-line summary. KEEP=1 keeps the directory.
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
# torch first, pinned: on the machine this was run on, `pip install torch==2.13.0` resolves to the
# CPU build (2.13.0+cpu, from the configured index); elsewhere it may be a CUDA build of the same
# version. The constraints file keeps the later installs from replacing it.
run "install torch 2.13.0" "$V/pip" install -q "${C[@]}" torch==2.13.0
run "install patched transformer-lens" "$V/pip" install -q "${C[@]}" "$TL"
run "install test tools and tl_moe's runtime dependencies" "$V/pip" install -q "${C[@]}" pytest \
    scikit-learn scipy pyarrow matplotlib tabulate pyyaml pysbd
run "install tl_moe (--no-deps)" "$V/pip" install -q --no-deps -e "$REPO"
VERSIONS=$("$V/python" -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")')
echo "   $VERSIONS" | tee -a "$LOG"
case "$VERSIONS" in
    "torch 2.13.0"*", transformers 5.25.0") ;;
    *) finish 1 "FAILED: expected torch 2.13.0 and transformers 5.25.0, got $VERSIONS" ;;
esac

PYTEST=("$V/python" -m pytest -q -p no:cacheprovider -o addopts= -rfEs)
# pytest_ran OUTPUT RC: whether a pytest run ended normally (exit 0 or 1 = tests failed, and its
# summary line printed); otherwise (2 interrupted, 3 internal error, 4 usage, 5 nothing collected,
# a crash) the check fails.
pytest_ran() {
    { [ "$2" = 0 ] || [ "$2" = 1 ]; } && tail -n 1 "$1" | grep -qE '^(=+ )?[0-9]+ (passed|failed|errors?|skipped)\b.* in [0-9.]+s'
}
summary_of() { tail -n 1 "$1" | tr -d '=' | sed 's/^ *//; s/ in [0-9.]*s.*//'; }

cd "$TL" || finish 1 "no $TL"
# The new tests: every test collected must pass (none skipped, none missing).
NEW_TESTS=(tests/unit/model_bridge/generalized_components/test_moe_expert_hooks.py
    tests/integration/model_bridge/test_moe_expert_hooks_parity.py)
echo "== new tests: ${NEW_TESTS[*]}" | tee -a "$LOG"
COLLECTED=$("${PYTEST[@]}" --collect-only "${NEW_TESTS[@]}" 2>/dev/null | grep -c '::')
"${PYTEST[@]}" "${NEW_TESTS[@]}" >"$WORK/new.txt" 2>&1
NEW_RC=$?
cat "$WORK/new.txt" >>"$LOG"
NEW_SUMMARY=$(summary_of "$WORK/new.txt")
echo "   $NEW_SUMMARY (rc $NEW_RC, $COLLECTED collected)" | tee -a "$LOG"
new_tests_ok() {
    [ "$NEW_RC" = 0 ] && [ "$COLLECTED" -gt 0 ] && pytest_ran "$WORK/new.txt" "$NEW_RC" \
        && grep -qE "^$COLLECTED passed(, [0-9]+ warnings?)?\$" <<<"$NEW_SUMMARY"
}
if ! new_tests_ok; then
    tail -n 40 "$WORK/new.txt"
    finish 1 "FAILED: new tests: $NEW_SUMMARY (rc $NEW_RC; $COLLECTED collected, all must pass)"
fi

# TransformerLens's own MoE-related test files (the new ones excluded: run above).
mapfile -t TESTS < <(ls tests/unit/*.py tests/unit/*/*.py tests/unit/*/*/*.py tests/integration/*/*.py \
    | grep -iE '/test_[^/]*(moe|expert|mixtral|gpt_oss|deepseek|routing)[^/]*\.py$' \
    | grep -v 'test_moe_expert_hooks' | sort)
echo "== TransformerLens MoE tests: ${#TESTS[@]} files" | tee -a "$LOG"
"${PYTEST[@]}" --continue-on-collection-errors "${TESTS[@]}" >"$WORK/patched.txt" 2>&1
TL_RC=$?
TL_SUMMARY=$(summary_of "$WORK/patched.txt")
pytest_ran "$WORK/patched.txt" "$TL_RC" || { tail -n 40 "$WORK/patched.txt"
    finish 1 "FAILED: TransformerLens MoE tests ended abnormally (rc $TL_RC): $TL_SUMMARY"; }
grep -E '^(FAILED|ERROR) ' "$WORK/patched.txt" | awk '{print $2}' | sort -u >"$WORK/failing.txt"
[ "$TL_RC" = 0 ] || [ -s "$WORK/failing.txt" ] || finish 1 "FAILED: pytest exited $TL_RC naming no failing test"
REGRESSIONS=0
if [ -s "$WORK/failing.txt" ]; then
    # The same tests on the unpatched source (python -m pytest imports the package of the cwd).
    mapfile -t FAILING <"$WORK/failing.txt"
    (cd "$PRISTINE" && "${PYTEST[@]}" --continue-on-collection-errors "${FAILING[@]}" >"$WORK/pristine.txt" 2>&1)
    PRISTINE_RC=$?
    pytest_ran "$WORK/pristine.txt" "$PRISTINE_RC" || { tail -n 40 "$WORK/pristine.txt"
        finish 1 "FAILED: the rerun on the unpatched source ended abnormally (rc $PRISTINE_RC)"; }
    grep -E '^(FAILED|ERROR) ' "$WORK/pristine.txt" | awk '{print $2}' | sort -u >"$WORK/pristine_failing.txt"
    comm -23 "$WORK/failing.txt" "$WORK/pristine_failing.txt" >"$WORK/regressions.txt"
    REGRESSIONS=$(wc -l <"$WORK/regressions.txt")
    echo "   ${#FAILING[@]} failing here; on the unpatched source $(wc -l <"$WORK/pristine_failing.txt") of them fail too" | tee -a "$LOG"
fi
echo "   $TL_SUMMARY" | tee -a "$LOG"
if [ "$REGRESSIONS" -gt 0 ]; then
    cat "$WORK/regressions.txt"
    finish 1 "FAILED: $REGRESSIONS TransformerLens tests regress"
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

finish 0 "OK: ${#PATCHES[@]} patches apply to transformer-lens 4.3.0 ($VERSIONS); new tests ($NEW_SUMMARY); \
TL MoE tests ($TL_SUMMARY): 0 regressions, $PREEXISTING fail unpatched too; tl_moe ($TLMOE_SUMMARY); $(tail -n 1 "$WORK/compare.txt" | sed 's/^compare: //')"
