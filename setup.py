"""nlf-tf: a TensorFlow 2 / Keras 3 trainer for Neural Localizer Fields (NLF)."""

import glob
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithSpecs(build_py):
    """Ships the repository's data_specs/*.json inside the package as nlf_tf/_data_specs."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, 'nlf_tf', '_data_specs')
        os.makedirs(target, exist_ok=True)
        for path in glob.glob(os.path.join(HERE, 'data_specs', '*.json')):
            shutil.copy(path, target)


setup(
    name='nlf-tf',
    version='0.1.0',
    description='TensorFlow 2 / Keras 3 trainer for Neural Localizer Fields (NLF)',
    long_description=open(os.path.join(HERE, 'README.md'), encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='MIT',
    python_requires='>=3.10',
    packages=find_packages(include=['nlf_tf', 'nlf_tf.*']),
    install_requires=[
        'tensorflow>=2.21,<2.22',
        'numpy',
        'easydict',
        'absl-py',
        'tensorboard',
        'scipy',  # reads the MATLAB .mat files of MADS and DensePose
    ],
    extras_require={
        'test': ['pytest', 'pandas'],
        'agora': ['pandas'],  # reads AGORA's DataFrame pickles (also used by the demo)
        'video': ['imageio', 'imageio-ffmpeg'],  # decodes MADS videos at prepare time
    },
    entry_points={'console_scripts': [
        'nlf-tf-train=nlf_tf.cli.train:run',
        'nlf-tf-prepare=nlf_tf.cli.prepare:run',
        'nlf-tf-inspect=nlf_tf.cli.inspect:run',
        'nlf-tf-data-service=nlf_tf.cli.data_service:run',
        'nlf-tf-canonical=nlf_tf.cli.canonical:run',
    ]},
    cmdclass={'build_py': BuildPyWithSpecs},
)
