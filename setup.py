from setuptools import find_packages, setup

setup(
    name="lmkreg",
    version="0.1.0",
    description="Self-configuring prostate landmark detection and rigid MR->TRUS registration",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["lmkreg", "lmkreg.*"]),
    install_requires=[
        "numpy>=1.23",
        "scipy>=1.9",
        "SimpleITK>=2.2",
        "nibabel>=4",
        "torch>=2.1",
        "scikit-image>=0.20",
        "trimesh>=3.20",
        "matplotlib>=3.6",
        "tqdm>=4.60",
        "batchgenerators>=0.25",
        "acvl-utils>=0.2",
        "blosc2>=2.5",
        "threadpoolctl>=3",
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout>=2"]},
    entry_points={
        "console_scripts": [
            "lmkreg_generate_phantoms=lmkreg.phantoms.cli:main",
            "lmkreg_import=lmkreg.dataset.cli:import_main",
            "lmkreg_verify_dataset=lmkreg.dataset.cli:verify_main",
            "lmkreg_plan_and_preprocess=lmkreg.planning.plan_and_preprocess:main",
            "lmkreg_train=lmkreg.training.run:main",
            "lmkreg_predict=lmkreg.inference.predict_folder:main",
            "lmkreg_register=lmkreg.registration.cli:main",
        ],
    },
)
