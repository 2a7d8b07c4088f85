"""BASQ: Branch-wise Activation-clipping Search Quantization for Sub-4-bit Neural Networks (ECCV 2022).

Importing the package registers the layer kind ``basq`` and the quantizer ``basq_clip``
(:mod:`papers.basq.layers`, :mod:`papers.basq.quant`). The method, in three stages (supplementary Alg. 1;
each a CLI command, ``mpq basq supernet|search|finetune|report``):

- :mod:`papers.basq.supernet`: supernet training, a uniformly sampled branch per block each iteration,
  distillation from a float teacher, two stages (activations, then weights + activations);
- :mod:`papers.basq.search`: K-fold evolutionary search of the selection vector (:mod:`papers.basq.evolution`,
  :mod:`papers.basq.folds`);
- :mod:`papers.basq.finetune`: per fold, BN and clip fine-tuning, accuracy on the other folds.

The network (the new building block with flexconn, or the standard MobileNetV2 block) is in
:mod:`papers.basq.models`. See README.md for the algorithm line -> code table.
"""

from papers.basq import layers as _layers  # noqa: F401  (registers the layer kind and the quantizer)
