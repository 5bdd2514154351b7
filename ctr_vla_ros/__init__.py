"""OpenVLA-OFT with coordinated cross-modal token reuse (CTR) for ROS 2 robot arms.

Layout: `model` (OpenVLA-OFT in plain PyTorch, no ROS), `ctr` (the reuse engine, no ROS), `nodes` (thin rclpy
shells), `adapters` (robot driver bridges), `sim` (LIBERO), `tools` (command-line tools and benchmarks).
"""
