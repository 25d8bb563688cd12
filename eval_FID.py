"""FID of generated images against the real test images (3,000 images by default), with KID.

    python eval_FID.py --cfg cfg/bird.yml --images path/to/valid            # a B_VALIDATION=True folder
    python eval_FID.py --cfg cfg/bird.yml --netG path/to/netG_550.pth       # generated in memory
    python eval_FID.py ... EVAL.INCEPTION_WEIGHTS=/path/to/weights-inception-2015-12-05-6726825d.pth
"""
import sys

from miscc.cli import eval_main

if __name__ == '__main__':
    sys.exit(eval_main('FID'))
