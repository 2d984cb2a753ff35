"""The GPU check: one command, one table of what a GPU does with this project's code.

    PYTHONPATH=. python3 -m benchmarks.gpu --out DIR          # on a machine with a CUDA GPU (under 6 min)
    PYTHONPATH=. python3 -m benchmarks.gpu --small --out DIR  # every row's code path, CPU-sized (the tests)

Writes DIR/gpu-check.md and DIR/gpu-check.json after every row. Rows, in order of value (the
docs: docs/benchmarks.md):
  1. ResNet-20, K separate networks vs fused K (K = 1, 4, 8, 16, 32), both under CUDA graphs with
     forward, backward and SGD inside the graph, bf16, CE - alpha*SI: aggregate images/s and the
     fused/separate ratio; then a plain-CE pair, an eager pair and the trainer's own paths;
  2. ResNet-50 training from tensors on the device, then through each ImageNet loader (portable,
     nvjpeg, DALI when installed) on generated JPEGs: the stall is 1 - loader / synthetic;
  3. ResNet-50 evaluation from the validation set decoded once;
  4. torch.compile rows, last (their compile time is the least predictable).
Each row has its own time cap and error capture; on a CPU, graph and compile rows run eagerly and
say so. No Ray, submitit or DALI needed (DALI is measured only when it imports).

Modules: cli (rows, sizes, caps, the refusals), report (isolation, the files), steps (the like-for-
like training steps, CUDA-graph capture, timing), resnet20 and resnet50 (the rows).
"""
