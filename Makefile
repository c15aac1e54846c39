# Convenience aliases for the README's two commands.
.PHONY: run test bench
run:
	./run.sh
test:
	./test.sh
bench:
	./bench.sh all
