"""python -m normalized_faces.pretrained --run=RUN: package a training run as the shipped model."""

from normalized_faces.pretrained import main

main()
