"""Recordings of the policy's inputs and outputs as MCAP files (ROS 2 CDR, the format rosbag2 writes by default),
and their offline replay through the CTR engine. Plain Python: reading, writing and replaying need no ROS."""
