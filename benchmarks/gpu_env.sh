# Source on the lent GPU machine (see benchmarks/README.md): the Megatron-Bridge + TE stack that
# ../shared/hooks/device/pack.sh carries (.gpu/stack.sh), plus NeMo-Run and its launch-side wheels,
# copied to /tmp/nrw by the chunk call. Then `python -m dsv3_recipes.cli ...` works as `dsv3 ...`.
source .gpu/stack.sh || return 1
if [ ! -f /tmp/site/.nemorun ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/nrw/*.whl 2>&1 | grep -v "already exists" | tail -3
  touch /tmp/site/.nemorun
fi
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
