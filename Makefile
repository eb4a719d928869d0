# The README's two commands. Both set up a local venv (.venv) on first use.
.PHONY: demo test bench

demo:  ## install and run the weight-free demo on examples/
	bash scripts/dev.sh demo

test:  ## install and run the whole test suite
	bash scripts/dev.sh test

bench:  ## quality/speed table of the classical engines vs OpenCV, scikit-image, pypatchmatch
	bash scripts/dev.sh bench
