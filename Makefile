# Each target creates the virtual environment when it is missing (or pyproject.toml changed).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

JUNIT := /usr/share/java/junit4.jar

.PHONY: demo test test-slow lint junit

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/gemma-edge demo

# The Android core's tests (in the pytest run) need javac and JUnit 4: Debian's packages.
$(JUNIT):
	command -v javac >/dev/null || apt-get install -y -qq --no-install-recommends openjdk-17-jdk-headless \
	  || (apt-get update -qq && apt-get install -y -qq --no-install-recommends openjdk-17-jdk-headless)
	apt-get install -y -qq --no-install-recommends junit4 \
	  || (apt-get update -qq && apt-get install -y -qq --no-install-recommends junit4)

junit: $(JUNIT)

test: $(VENV)/.installed $(JUNIT)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed $(JUNIT)
	$(PY) -m pytest -q -m slow

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
