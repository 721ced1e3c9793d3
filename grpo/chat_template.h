// Chat prompts for the supported model families, written per family instead of running the
// Jinja template from tokenizer_config.json: the output is the string the reference template
// renders for system/user/assistant turns plus the generation prompt (tests compare the two).
//
//   ChatFormat f = detect_chat_format(tok.chat_template(), "<|begin_of_text|>");
//   std::string s = render_chat(f, {{"system", "Be brief."}, {"user", "2+2?"}}, true);
#pragma once

#include <span>
#include <string>
#include <vector>

namespace cohort::grpo {

enum class ChatFamily {
  none,    // no template: prompts are <bos> + text
  chatml,  // Qwen2 / Qwen2.5 / Qwen3: <|im_start|>role\n…<|im_end|>\n
  llama3,  // Llama 3 / 3.1 / 3.2: <|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>
};

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant"
  std::string content;
};

struct ChatFormat {
  ChatFamily family = ChatFamily::none;
  std::string bos;             // prepended once (Llama 3's <|begin_of_text|>); empty for ChatML
  std::string default_system;  // used when no system turn is given (Qwen2.5's "You are Qwen…")
  bool llama_date_header = false;  // Llama 3.1+: system turn opens with the knowledge-cutoff lines
  std::string date = "26 Jul 2024";  // the template's default date_string (fixed: reproducible)
};

// Recognizes the family from the Jinja source; throws cohort::Error for a template that is
// present but of no supported family (so a model is never prompted in the wrong format).
ChatFormat detect_chat_format(const std::string& jinja, const std::string& bos_token);

std::string render_chat(const ChatFormat& format, std::span<const ChatMessage> messages,
                        bool add_generation_prompt);

}  // namespace cohort::grpo
