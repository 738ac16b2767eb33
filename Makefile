# The two commands a user needs: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vexkd-setup
SETUP_INPUTS := requirements.txt requirements-ros-wheels.txt requirements-dev.txt \
	setup.py setup.cfg package.xml tools/setup_env.sh tools/build_interfaces.py \
	$(wildcard interfaces/*/msg/*.msg interfaces/*/CMakeLists.txt)

.PHONY: setup test test-fast demo bench clean

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	bash tools/setup_env.sh
	touch $@

test: setup
	$(PY) -m pytest -q tests

# The unit tier only (pytest.ini's markers): in-process tests for the edit loop.
test-fast: setup
	$(PY) -m pytest -q -m unit tests

demo: setup
	$(PY) -m vexkd_train.demo

bench: setup
	$(PY) bench/bench_conversions.py
	$(PY) bench/bench_synthetic.py
	$(PY) bench/bench_models.py
	$(PY) bench/bench_distillation.py
	$(PY) bench/bench_pooling.py
	$(PY) bench/bench_nodes.py
	$(PY) bench/bench_node_stream.py
	$(PY) bench/bench_data_loading.py
	$(PY) bench/bench_training_memory.py --narrow

clean:
	rm -rf $(VENV) build install log .pytest_cache
