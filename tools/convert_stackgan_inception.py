"""Convert StackGAN's CUB-fine-tuned Inception-v3 (TensorFlow checkpoint) into a PyTorch
state dict for models/inception_cub.py (the classifier of the CUB Inception Score).

    pip install -r requirements-convert.txt          # TensorFlow, for this conversion only
    python tools/convert_stackgan_inception.py \\
        inception_finetuned_models/birds_valid299/model.ckpt-5000 models/stackgan_cub_inception.pth

The moving averages of the weights are converted (the protocol restores them); --raw-weights
takes the raw variables instead. The output holds tensors only (loads with weights_only=True)
and loads strictly into ``torchvision.models.inception_v3(num_classes=51, aux_logits=False,
init_weights=False)`` as well as into ``models.inception_cub.CUBInception3``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from miscc.core.checkpoint import CheckpointError, save_atomic  # noqa: E402
from miscc.evaluation.cub_inception import convert_tf_checkpoint  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoint', help='TF checkpoint prefix (.../birds_valid299/model.ckpt-5000) or its folder')
    parser.add_argument('out', help='PyTorch state dict to write (.pth)')
    parser.add_argument('--raw-weights', action='store_true',
                        help='convert the raw variables instead of their moving averages')
    parser.add_argument('--force', action='store_true', help='replace an existing output file')
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and not args.force:
        print(f"convert_stackgan_inception.py: error: '{args.out}' exists; pass --force to replace it",
              file=sys.stderr)
        return 2
    try:
        state, unused = convert_tf_checkpoint(args.checkpoint, moving_average=not args.raw_weights)
    except (ImportError, CheckpointError) as e:
        print(f'convert_stackgan_inception.py: error: {e}', file=sys.stderr)
        return 2
    save_atomic(state, args.out)
    with open(args.out, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    print(f"wrote {len(state)} tensors ({'raw' if args.raw_weights else 'moving-average'} weights) to "
          f"'{args.out}' (sha256 {digest}); {len(unused)} checkpoint variables not needed for the logits")
    return 0


if __name__ == '__main__':
    sys.exit(main())
