"""Backbone architectures: convnet, CIFAR ResNet-18, ViT, Swin, and the k-means patch tokenizer."""
