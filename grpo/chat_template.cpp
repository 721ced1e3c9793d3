#include "grpo/chat_template.h"

#include "common/check.h"

namespace cohort::grpo {
namespace {

bool contains(const std::string& s, const char* needle) { return s.find(needle) != std::string::npos; }

// Jinja's `trim`: Python's str.strip() (whitespace at both ends).
std::string trim(const std::string& s) {
  auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
  size_t b = 0, e = s.size();
  while (b < e && ws(s[b])) ++b;
  while (e > b && ws(s[e - 1])) --e;
  return s.substr(b, e - b);
}

}  // namespace

ChatFormat detect_chat_format(const std::string& jinja, const std::string& bos_token) {
  ChatFormat f;
  if (jinja.empty()) return f;
  if (contains(jinja, "<|im_start|>")) {
    f.family = ChatFamily::chatml;
    // Qwen2.5's template injects its identity line when the conversation has no system turn.
    const std::string qwen = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
    if (contains(jinja, qwen.c_str())) f.default_system = qwen;
    return f;
  }
  if (contains(jinja, "<|start_header_id|>")) {
    f.family = ChatFamily::llama3;
    f.bos = bos_token;
    f.llama_date_header = contains(jinja, "Cutting Knowledge Date");
    return f;
  }
  throw Error("unsupported chat template (supported families: ChatML/Qwen2, Llama 3)");
}

std::string render_chat(const ChatFormat& f, std::span<const ChatMessage> messages,
                        bool add_generation_prompt) {
  std::string out;
  switch (f.family) {
    case ChatFamily::none:
      for (const auto& m : messages) out += m.content;
      return out;
    case ChatFamily::chatml: {
      const bool has_system = !messages.empty() && messages[0].role == "system";
      if (!has_system && !f.default_system.empty())
        out += "<|im_start|>system\n" + f.default_system + "<|im_end|>\n";
      for (const auto& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      return out;
    }
    case ChatFamily::llama3: {
      out += f.bos;
      size_t first = 0;
      if (f.llama_date_header) {
        // 3.1+: the system turn always exists and carries the knowledge-cutoff header.
        std::string system;
        if (!messages.empty() && messages[0].role == "system") {
          system = trim(messages[0].content);
          first = 1;
        }
        out += "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
               "Today Date: " + f.date + "\n\n" + system + "<|eot_id|>";
      }
      for (size_t i = first; i < messages.size(); ++i)
        out += "<|start_header_id|>" + messages[i].role + "<|end_header_id|>\n\n" +
               trim(messages[i].content) + "<|eot_id|>";
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      return out;
    }
  }
  COHORT_CHECK(false, "unknown chat family");
  return out;
}

}  // namespace cohort::grpo
