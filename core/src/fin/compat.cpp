// Python-fin compatibility repair. simdjson on-demand locates the byte ranges to change;
// the output is the input with only those ranges edited.
#include <fingate/fin_compat.hpp>
#include <simdjson.h>

#include <algorithm>
#include <vector>

namespace fingate::fin {

namespace {

using namespace simdjson;

struct Edit {
  size_t begin, end;    // replaced range [begin, end) of the original
  std::string text;     // replacement
};

// The byte offset of p inside base.
size_t offsetIn(const char* base, const char* p) { return static_cast<size_t>(p - base); }

bool isWs(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Which of the four optional fields a variable object has.
struct VarFields {
  bool description = false, value = false, constant = false, external = false;
  size_t count = 0;
};

bool scanVariable(std::string_view raw, VarFields& vf) {
  ondemand::parser p;
  padded_string ps(raw);
  ondemand::document d;
  if (p.iterate(ps).get(d)) return false;
  ondemand::object o;
  if (d.get_object().get(o)) return false;
  for (auto field : o) {
    std::string_view k;
    if (field.unescaped_key().get(k)) return false;
    vf.count++;
    if (k == "description") vf.description = true;
    else if (k == "value") vf.value = true;
    else if (k == "constant") vf.constant = true;
    else if (k == "external") vf.external = true;
  }
  return true;
}

// Type of an authentication object: "" when missing or empty; sets ok=false on bad JSON.
bool authTypeEmpty(std::string_view raw) {
  ondemand::parser p;
  padded_string ps(raw);
  ondemand::document d;
  if (p.iterate(ps).get(d)) return false;
  ondemand::object o;
  if (d.get_object().get(o)) return false;
  ondemand::value t;
  auto err = o.find_field_unordered("type").get(t);
  if (err == NO_SUCH_FIELD) return true;
  if (err) return false;
  std::string_view s;
  if (t.get_string().get(s)) return false;
  return s.empty();
}

}  // namespace

bool repairCommandForPythonFin(std::string_view payload, std::string& out, RepairStats& stats) {
  ondemand::parser parser;
  padded_string ps(payload);
  const char* base = ps.data();
  ondemand::document doc;
  if (parser.iterate(ps).get(doc)) return false;
  ondemand::object root;
  if (doc.get_object().get(root)) return false;
  std::vector<Edit> edits;
  RepairStats local;
  bool is_command = false;
  for (auto field : root) {
    std::string_view key;
    if (field.unescaped_key().get(key)) return false;
    if (key == "type") {
      std::string_view t;
      if (field.value().get_string().get(t) == SUCCESS) is_command = t == "command";
      continue;
    }
    if (key != "command") continue;
    ondemand::object cmd;
    if (field.value().get_object().get(cmd)) return false;
    for (auto f : cmd) {
      ondemand::raw_json_string rk;
      if (f.key().get(rk)) return false;
      const char* key_quote = rk.raw() - 1;
      std::string_view k;
      if (f.unescaped_key().get(k)) return false;
      if (k == "authentication") {
        ondemand::object a;
        if (f.value().get_object().get(a)) continue;  // not an object: leave it to the fin
        std::string_view raw;
        if (a.raw_json().get(raw)) return false;
        if (!authTypeEmpty(raw)) continue;
        // Remove `"authentication":{...}` with one adjoining comma.
        size_t b = offsetIn(base, key_quote);
        size_t e = offsetIn(base, raw.data()) + raw.size();
        size_t pb = b;
        while (pb > 0 && isWs(payload[pb - 1])) --pb;
        if (pb > 0 && payload[pb - 1] == ',') {
          b = pb - 1;
        } else {
          size_t ne = e;
          while (ne < payload.size() && isWs(payload[ne])) ++ne;
          if (ne < payload.size() && payload[ne] == ',') e = ne + 1;
        }
        edits.push_back({b, e, ""});
        local.auth_removed++;
      } else if (k == "variables") {
        ondemand::object vars;
        if (f.value().get_object().get(vars)) continue;
        for (auto vfield : vars) {
          ondemand::object vo;
          if (vfield.value().get_object().get(vo)) continue;
          std::string_view raw;
          if (vo.raw_json().get(raw)) return false;
          VarFields vf;
          if (!scanVariable(raw, vf)) return false;
          std::string add;
          auto put = [&](const char* text) {
            if (vf.count++ > 0) add += ',';
            add += text;
          };
          if (!vf.description) put("\"description\":\"\"");
          if (!vf.value) put("\"value\":\"\"");
          if (!vf.constant) put("\"constant\":false");
          if (!vf.external) put("\"external\":false");
          if (add.empty()) continue;
          // Insert before the variable's closing brace (raw ends with '}', trailing spaces trimmed by simdjson).
          size_t close = offsetIn(base, raw.data()) + raw.size();
          while (close > 0 && payload[close - 1] != '}') --close;
          edits.push_back({close - 1, close - 1, add});
          local.variables_completed++;
        }
      }
    }
  }
  if (!is_command || edits.empty()) return false;
  std::sort(edits.begin(), edits.end(), [](const Edit& a, const Edit& b) { return a.begin < b.begin; });
  std::string r;
  r.reserve(payload.size() + 64 * edits.size());
  size_t pos = 0;
  for (auto& e : edits) {
    r.append(payload.substr(pos, e.begin - pos));
    r += e.text;
    pos = e.end;
  }
  r.append(payload.substr(pos));
  out = std::move(r);
  stats.auth_removed += local.auth_removed;
  stats.variables_completed += local.variables_completed;
  return true;
}

}  // namespace fingate::fin
