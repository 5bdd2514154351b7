"""Closed-loop evaluation without ROS: the LIBERO simulation, the policy and the policy node's execution rules in one
process (`rollout.py`), episodes from fixed or sampled starts (`starts.py`), worker processes sharing the episodes
of every configuration, a resumable results file (`runner.py`, `make eval`), and paired statistics
(`statistics.py`). The ROS harness (`ctr_vla_ros/tools/evaluate.py`, `make eval-ros`) runs the same episodes over
topics; a test checks that both produce the same actions."""
