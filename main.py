"""Train SSA-GAN with frozen DAMSM encoders, or generate images with B_VALIDATION=True.

    python main.py --cfg cfg/bird.yml [KEY=VALUE ...]
    python main.py --cfg cfg/bird.yml B_VALIDATION=True TRAIN.NET_G=path/netG_600.pth
    python main.py --cfg cfg/bird.yml B_VALIDATION=True TRAIN.NET_G=... --caption "a red bird"
    torchrun --nproc_per_node 2 main.py --cfg cfg/bird.yml      # DDP
"""
import sys

from miscc.cli import gan_main

if __name__ == '__main__':
    sys.exit(gan_main(finetune=False))
