"""Inception Score of generated images (30,000 images, 10 splits by default).

    python eval_IS.py --cfg cfg/bird.yml --images path/to/valid            # a B_VALIDATION=True folder
    python eval_IS.py --cfg cfg/bird.yml --netG path/to/netG_550.pth       # generated in memory
    python eval_IS.py ... EVAL.INCEPTION_WEIGHTS=/path/to/weights-inception-2015-12-05-6726825d.pth
"""
import sys

from miscc.cli import eval_main

if __name__ == '__main__':
    sys.exit(eval_main('IS'))
