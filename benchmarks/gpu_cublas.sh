# Source ON the lent GPU machine, after the chunk calls copied each carried .cubN/c to /tmp/cub/cN: loads
# cuBLAS 13.6 ahead of the image's for every process the call starts (TorchTitan's too, so both sides of a
# comparison run the same library). TE's one-launch grouped GEMM for the experts
# (NVTE_GROUPED_LINEAR_USE_FUSED_GROUPED_GEMM=1, dsv3_recipes/train/grouped_gemm.py) needs cuBLASLt 13.4+
# on Hopper (13.6+ for FP8 blockwise, which then asserts on the device: recipe/rules.BLOCKWISE_GROUPED_GEMM).
# Made here, once:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_27_x86_64 \
#     nvidia-cublas==13.6.2.16 -d /tmp/cub && split -b 52m -d -a 1 /tmp/cub/*.whl part  # -> .cub0..7/c
if [ ! -f /tmp/cub/lib/libcublasLt.so.13 ]; then
  mkdir -p /tmp/cub/lib && cat $(ls /tmp/cub/c[0-9]* | sort -V) >/tmp/cub/cublas.whl || return 1
  python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for name in z.namelist():
    if "/lib/libcublas" in name:
        open("/tmp/cub/lib/" + name.rsplit("/", 1)[1], "wb").write(z.read(name))' /tmp/cub/cublas.whl || return 1
fi
export LD_PRELOAD="/tmp/cub/lib/libcublasLt.so.13:/tmp/cub/lib/libcublas.so.13${LD_PRELOAD:+:$LD_PRELOAD}"
