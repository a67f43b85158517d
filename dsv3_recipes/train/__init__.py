"""Train side: runs inside the GPU container (torch, megatron-bridge, TE). Only entry.py is
importable on the launch side, because NeMo-Run references its ``pretrain`` function."""
