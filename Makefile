# Thin wrapper over infra/install-deps.sh, CMake and CTest.
#   make demo   install, build, train the example CNN on Fashion-MNIST
#   make test   install, build, run every test
#   make asan   the unit tests again under AddressSanitizer + UBSan
#   make bench  install, build, run every benchmark and rewrite BENCHMARKS.md
#               (BENCH_FLAGS=--quick for a pipeline check)
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)

.PHONY: all deps configure build test demo bench asan format clean

all: build

deps:
	infra/install-deps.sh

configure: deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure --timeout 900

demo: build
	infra/demo.sh $(BUILD)

bench: build
	bench/run --build $(BUILD) $(BENCH_FLAGS)

asan: deps
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DTANDEM_SANITIZE=ON
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=0 ctest --output-on-failure -L unit --timeout 900

format:
	clang-format -i $$(git ls-files '*.h' '*.cc')

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
