from glob import glob

from setuptools import find_packages, setup

package_name = 'ctr_vla_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='ctr_vla_ros maintainers',
    maintainer_email='maintainers@ctr-vla-ros.dev',
    description='OpenVLA-OFT with coordinated cross-modal token reuse (CTR) for ROS 2 robot arms.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'ctr-vla-predict = ctr_vla_ros.tools.predict:main',
            'ctr-vla-make-checkpoint = ctr_vla_ros.tools.make_checkpoint:main',
            'ctr-vla-train = ctr_vla_ros.tools.train:main',
            'ctr-vla-replay = ctr_vla_ros.tools.replay:main',
            'ctr-vla-sweep = ctr_vla_ros.tools.sweep:main',
            'ctr-vla-to-mcap = ctr_vla_ros.tools.convert_to_mcap:main',
            'ctr-vla-evaluate = ctr_vla_ros.evaluation.runner:main',
            'ctr_vla_policy = ctr_vla_ros.nodes.policy_node:main',
            'ctr_vla_diagnostics = ctr_vla_ros.nodes.diagnostics_node:main',
            'ctr_vla_recorder = ctr_vla_ros.nodes.recorder_node:main',
            'ctr_vla_kinova_adapter = ctr_vla_ros.adapters.kinova:main',
            'ctr_vla_franka_adapter = ctr_vla_ros.adapters.franka:main',
            'ctr_vla_libero_sim = ctr_vla_ros.sim.libero_sim_node:main',
        ],
    },
)
