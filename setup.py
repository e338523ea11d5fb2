from setuptools import find_packages, setup

setup(
    name="randwire_d2",
    version="0.1.0",
    description="Randomly wired neural networks (Xie et al., ICCV 2019) as a Detectron2 extension",
    packages=find_packages(include=["randwire_d2", "randwire_d2.*"]),
    python_requires=">=3.10",
    # Every dependency is pinned once, in requirements.txt; detectron2 is installed by the
    # Makefile from sal-detectron2 (see README).
    install_requires=[],
)
