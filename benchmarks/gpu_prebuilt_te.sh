# Source ON the lent GPU machine instead of compiling TE's torch extension there (~100 s): the chunks'
# wheels into /tmp/site as .gpu/stack.sh installs them, then the extension this checkout's venv built
# (carried as .tetorch; same torch 2.11.0+cu130 and Python 3.12). benchmarks/gpu_env.sh then finds
# /tmp/site/.done and skips the compile. Made here, once:
#   mkdir -p .tetorch && cp .venv/lib/python3.12/site-packages/transformer_engine/wheel_lib/transformer_engine_torch*.so .tetorch/
# Its install time is not in a committed result yet: time it on the next lent machine.
if [ ! -f /tmp/site/.done ]; then
  ls .tetorch/transformer_engine_torch*.so >/dev/null || { echo "gpu_prebuilt_te.sh: no .tetorch/*.so carried"; return 1; }
  cat $(ls /tmp/c/c* | sort -V) | tar xf - -C /tmp || return 1
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/wheels/*.whl /tmp/wheels/*.tar.gz 2>&1 | grep -v "already exists" | tail -5
  cp .tetorch/transformer_engine_torch*.so /tmp/site/transformer_engine/wheel_lib/ || return 1
  # megatron-core's wheel ships the dataset helpers prebuilt but no Makefile; Bridge calls make anyway
  [ -f /tmp/site/megatron/core/datasets/Makefile ] || printf 'default:\n\t@true\n' >/tmp/site/megatron/core/datasets/Makefile
  touch /tmp/site/.done
fi
