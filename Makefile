# voipqos developer entry points. The two README commands are scripts/demo.sh and
# scripts/test.sh; these targets are the same things for people who reach for make.
.PHONY: setup test lint bpf ipk demo clean

setup:
	./scripts/setup.sh

test:
	./scripts/test.sh

lint:
	.venv/bin/ruff check src tests bench

# tc-BPF classifier objects (bpfel + bpfeb) into build/bpf/
bpf:
	$(MAKE) -C bpf OUT=$(CURDIR)/build/bpf

# installable OpenWrt packages (.ipk) into build/ipk/, without the SDK
ipk: bpf
	./package/build-ipk.sh build/ipk

demo:
	./scripts/demo.sh

clean:
	rm -rf build
