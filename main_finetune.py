"""Fine-tune SSA-GAN together with its DAMSM text and image encoders (DAMSM loss on real
images, lambda_DA 0.1), starting from released or own checkpoints, or generate with
B_VALIDATION=True.

    python main_finetune.py --cfg cfg/bird.yml TRAIN.NET_G=path/netG_550.pth [KEY=VALUE ...]
"""
import sys

from miscc.cli import gan_main

if __name__ == '__main__':
    sys.exit(gan_main(finetune=True))
