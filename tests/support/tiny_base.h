// The small model and its weak base shared by the node and end-to-end suites: the built-in
// task's character tokenizer on a 2-layer, 32-wide transformer, warmed up on 1-digit addition
// until some completions are right, so that rewards (and therefore advantages and gradients)
// are not all zero.
//
//   grpo::Model m(tiny_model_config(), 7);
//   warm_up_tiny_base(m);
#pragma once

#include "grpo/tokenizer.h"
#include "grpo/tokenizer.h"
#include "grpo/trainer.h"

namespace cohort::test {

inline grpo::ModelConfig tiny_model_config() {
  grpo::ModelConfig c = grpo::task_model_config();
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 64;
  return c;
}

inline grpo::TaskSpec one_digit_addition() {
  grpo::TaskSpec t;
  t.name = "arith";
  t.digits = 1;
  return t;
}

// A short supervised warm-up of `m` (a tiny_model_config() model) to about 30 % accuracy.
inline void warm_up_tiny_base(grpo::Model& m) {
  grpo::PretrainConfig pc;
  pc.task = one_digit_addition();
  pc.model = m.config();
  pc.steps = 400;
  pc.batch_size = 32;
  pc.lr = 3e-3;
  pc.stop_at_accuracy = 0.3;
  pc.eval_every = 50;
  pc.eval_n = 10;  // 1-digit addition holds out 10 problems
  pc.max_new_tokens = 8;
  grpo::CharTokenizer tok;
  auto task = grpo::make_task(pc.task);
  grpo::pretrain(m, tok, *task, pc, false);
}

}  // namespace cohort::test
