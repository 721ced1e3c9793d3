# Thin wrapper over scripts/bootstrap + CMake presets. `make demo`, `make test`, `make bench`,
# `make gpu-check` (on a machine with NVIDIA GPUs; TORCH_DIR=/path/to/libtorch for a CUDA LibTorch).
PRESET ?= default
BUILD  := build
JOBS   ?= 2

.PHONY: all bootstrap build demo test bench clean

all: build

bootstrap:
	@scripts/bootstrap

$(BUILD)/build.ninja: CMakeLists.txt CMakePresets.json | bootstrap
	@cmake --preset $(PRESET) >/dev/null

build: bootstrap $(BUILD)/build.ninja
	@cmake --build --preset $(PRESET) -j $(JOBS)

demo: build
	$(BUILD)/app/cohort demo

test: build
	ctest --preset $(PRESET) -j $(JOBS)

bench: build
	$(BUILD)/app/cohort bench

clean:
	rm -rf $(BUILD)

# Device checks in their own build folder (build-gpu, COHORT_CUDA=ON): see scripts/gpu-check.
# With TORCH_DIR set, bootstrap leaves the distribution's CPU LibTorch out.
.PHONY: gpu-check
gpu-check:
	@$(if $(TORCH_DIR),COHORT_SKIP_TORCH=1 )scripts/bootstrap
	@scripts/gpu-check

# libFuzzer targets (protocol frame reader, tensor decoder, top-k decoder, weight patches, round cards), built with clang in build-fuzz and
# run for FUZZ_SECONDS each; new inputs go to build-fuzz/corpus, seeds stay in tests/.
.PHONY: fuzz
FUZZ_BUILD   := build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := frame_reader tensor_decoder topk_decoder weight_patch round_card envelope
fuzz: bootstrap
	@cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOHORT_CUDA=OFF \
	  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ >/dev/null
	@cmake --build $(FUZZ_BUILD) --target fuzz_targets -j $(JOBS)
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t; \
	  echo "fuzz_$$t: $(FUZZ_SECONDS)s"; \
	  $(FUZZ_BUILD)/tests/protocol/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    $(FUZZ_BUILD)/corpus/$$t tests/protocol/fuzz/corpus/$$t > $(FUZZ_BUILD)/fuzz_$$t.log 2>&1; \
	  rc=$$?; \
	  if [ $$rc -ne 0 ]; then tail -n 60 $(FUZZ_BUILD)/fuzz_$$t.log; exit $$rc; fi; \
	  grep -E "Done|number_of_executed_units|new_units_added" $(FUZZ_BUILD)/fuzz_$$t.log; \
	done
