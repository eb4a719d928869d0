# The README's two commands. Both set up a local venv (.venv) on first use.
.PHONY: demo test test-latest lock bench

demo:  ## install and run the weight-free demo on examples/
	bash scripts/dev.sh demo

test:  ## install and run the whole test suite
	bash scripts/dev.sh test

test-latest:  ## the suite against the newest releases pyproject.toml allows (.venv-latest; not part of CI)
	bash scripts/dev.sh test-latest

lock:  ## regenerate constraints.txt from pyproject.toml (then run make test before committing it)
	bash scripts/dev.sh lock

bench:  ## quality/speed table of the classical engines vs OpenCV, scikit-image, pypatchmatch
	bash scripts/dev.sh bench
