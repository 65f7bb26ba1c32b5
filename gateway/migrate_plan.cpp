#include "migrate_plan.hpp"

#include <algorithm>
#include <cmath>

#include "cli_format.hpp"

namespace fingate::cli {

namespace {

uint64_t count(double v) { return v > 0 && std::isfinite(v) ? static_cast<uint64_t>(v) : 0; }

// A member of a {"<endpoint>": n, ...} object.
uint64_t perSide(const Json& j, std::string_view key, const std::string& side) {
  const Json* o = j.get(key);
  return o ? count(o->num(side)) : 0;
}

void jsonStrings(std::string& out, const std::vector<std::string>& v) {
  out += '[';
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out += ',';
    appendJsonString(out, v[i]);
  }
  out += ']';
}

std::string ago(double s) {
  if (s < 120) return numberText(std::floor(s)) + " s ago";
  if (s < 7200) return numberText(std::floor(s / 60)) + " min ago";
  return numberText(std::floor(s / 3600)) + " h ago";
}

}  // namespace

bool readMigrationState(const Json& j, MigrationState& m, std::string& error) {
  if (j.type != Json::Type::Object) {
    error = "expected a JSON object";
    return false;
  }
  m.from = j.str("from");
  m.to = j.str("to");
  m.active = j.str("active");
  if (m.from.empty() || m.to.empty() || m.active.empty()) {
    error = "'from', 'to' or 'active' is missing";
    return false;
  }
  m.passive = j.str("passive", m.active == m.from ? m.to : m.from);
  m.mirror = j.flag("mirror");
  m.mirrored_from = perSide(j, "mirrored", m.from);
  m.mirrored_to = perSide(j, "mirrored", m.to);
  m.mirror_failed = count(j.num("mirror_failed"));
  m.bindings_from = perSide(j, "bindings", m.from);
  m.bindings_to = perSide(j, "bindings", m.to);
  m.switched_at = j.str("switched_at");
  const Json* v = j.get("verify");
  m.has_verify = v && v->type == Json::Type::Object;
  if (m.has_verify) {
    m.verify_parity = v->flag("parity");
    m.verify_at = v->str("at");
    m.verify_age_s = v->num("age_s");
    m.verify_active = v->str("active");
    m.verify_messages = count(v->num("messages"));
    m.verify_topics = count(v->num("topics"));
  }
  m.cutover_allowed = j.flag("cutover_allowed");
  m.cutover_refused_because = j.str("cutover_refused_because");
  if (const Json* fins = j.get("fins"); fins && fins->type == Json::Type::Array)
    for (const Json& f : fins->array) {
      const Json* age = f.get("last_seen_age_s");
      auto side = [&](const std::string& name) {
        const Json* v = age ? age->get(name) : nullptr;
        return v && v->type == Json::Type::Number ? v->number : -1.0;
      };
      m.heard[f.str("fin_id")] = MigrationState::Heard{side(m.from), side(m.to)};
    }
  return true;
}

std::vector<std::string> heardOn(const MigrationState& m, bool to_side, double within_s) {
  std::vector<std::string> out;
  for (auto& [fin, h] : m.heard) {
    const double s = to_side ? h.to_s : h.from_s;
    if (s >= 0 && s <= within_s) out.push_back(fin);
  }
  return out;
}

namespace {
std::string heardText(const MigrationState::Heard& h, const std::string& from, const std::string& to) {
  auto one = [](double s) { return s < 0 ? std::string("never") : ago(s); };
  return "last heard on " + from + ": " + one(h.from_s) + ", on " + to + ": " + one(h.to_s);
}
}  // namespace

std::string statusText(const MigrationState& m) {
  std::string out = "migration: " + m.from + " -> " + m.to + "\n";
  out += "active:    " + m.active + " (passive: " + m.passive + ")" +
         (m.active == m.from ? ", not cut over" : ", cut over") +
         (m.switched_at.empty() ? "" : "; switched at " + m.switched_at) + "\n";
  out += "mirror:    " + std::string(m.mirror ? "on" : "off") + "; copies published to " + m.from + ": " +
         std::to_string(m.mirrored_from) + ", to " + m.to + ": " + std::to_string(m.mirrored_to) +
         ", dead-lettered: " + std::to_string(m.mirror_failed) + "\n";
  out += "bindings:  " + m.from + " " + std::to_string(m.bindings_from) + ", " + m.to + " " +
         std::to_string(m.bindings_to) + "\n";
  // Which broker the fins really speak on: the old endpoint can go once none is heard there.
  const auto on_from = heardOn(m, false, 60), on_to = heardOn(m, true, 60);
  out += "fins:      heard in the last 60 s on " + m.from + ": " + std::to_string(on_from.size()) + ", on " + m.to +
         ": " + std::to_string(on_to.size()) + " (of " + std::to_string(m.heard.size()) + ")\n";
  if (!m.has_verify)
    out += "verify:    no report yet (fingate migrate verify)\n";
  else
    out += "verify:    " + std::string(m.verify_parity ? "parity" : "DIFFERENCES") + ", " + ago(m.verify_age_s) +
           (m.verify_at.empty() ? "" : " (" + m.verify_at + ")") + "; active was " + m.verify_active + ", " +
           plural(m.verify_messages, "message", "messages") + " on " + plural(m.verify_topics, "topic", "topics") +
           "\n";
  if (m.active != m.from)
    out += "cutover:   done (fingate migrate rollback makes " + m.from + " active again)\n";
  else if (m.cutover_allowed)
    out += "cutover:   allowed (fingate migrate cutover)\n";
  else
    out += "cutover:   refused: " +
           (m.cutover_refused_because.empty() ? std::string("(no reason given)") : m.cutover_refused_because) + "\n";
  return out;
}

Plan makePlan(const MigrationState& m, const Json& fins) {
  Plan p;
  p.from = m.from;
  p.to = m.to;
  p.active = m.active;
  p.mirror = m.mirror;
  const std::string passive = m.active == m.from ? m.to : m.from;
  const Json* list = fins.get("fins");
  if (list && list->type == Json::Type::Array) {
    for (const Json& b : list->array) {
      const std::string fin_id = b.str("fin_id");
      const std::string ep = b.str("endpoint");
      const uint64_t session = count(b.num("session"));
      auto stay = [&](std::string reason) { p.stay.push_back(PlanStay{fin_id, ep, std::move(reason)}); };
      if (ep != m.from && ep != m.to)
        stay("bound on '" + ep + "', outside the migration");
      else if (session != 0)
        stay("a session binding (session " + std::to_string(session) + "): it stays with its connection");
      else if (b.flag("remote"))
        stay("a remote binding, owned by another gateway instance: that instance moves it");
      else if (b.flag("restored"))
        stay("restored from the state file and not claimed yet: it moves once the fin registers again");
      else if (ep == passive)
        stay("already on '" + passive + "', where the switch moves bindings to");
      else {
        PlanMove mv{fin_id, {}, ep, b.flag("acked"), {}};
        if (auto h = m.heard.find(fin_id); h != m.heard.end()) mv.heard = h->second;
        if (const Json* caps = b.get("capabilities"); caps && caps->type == Json::Type::Array)
          for (const Json& c : caps->array)
            if (c.type == Json::Type::String) mv.capabilities.push_back(c.string);
        p.move.push_back(std::move(mv));
      }
    }
  }
  if (m.active != m.from)
    p.problems.push_back("already cut over: '" + m.active + "' is active (fingate migrate rollback switches back to '" +
                         m.from + "')");
  else if (!m.cutover_allowed)
    p.problems.push_back("cutover refused now: " + (m.cutover_refused_because.empty()
                                                        ? std::string("the gateway gives no reason")
                                                        : m.cutover_refused_because));
  return p;
}

std::string planJson(const Plan& p) {
  std::string j = "{\"from\":";
  appendJsonString(j, p.from);
  j += ",\"to\":";
  appendJsonString(j, p.to);
  j += ",\"active\":";
  appendJsonString(j, p.active);
  j += ",\"mirror\":";
  j += p.mirror ? "true" : "false";
  j += ",\"move\":[";
  for (size_t i = 0; i < p.move.size(); ++i) {
    const PlanMove& m = p.move[i];
    if (i) j += ',';
    j += "{\"fin_id\":";
    appendJsonString(j, m.fin_id);
    j += ",\"capabilities\":";
    jsonStrings(j, m.capabilities);
    j += ",\"endpoint\":";
    appendJsonString(j, m.endpoint);
    j += ",\"acked\":";
    j += m.acked ? "true" : "false";
    auto age = [](double v) { return v < 0 ? std::string("null") : numberText(std::floor(v)); };
    j += ",\"last_seen_age_s\":{";
    appendJsonString(j, p.from);
    j += ':' + age(m.heard.from_s) + ',';
    appendJsonString(j, p.to);
    j += ':' + age(m.heard.to_s) + '}';
    j += '}';
  }
  j += "],\"stay\":[";
  for (size_t i = 0; i < p.stay.size(); ++i) {
    const PlanStay& s = p.stay[i];
    if (i) j += ',';
    j += "{\"fin_id\":";
    appendJsonString(j, s.fin_id);
    j += ",\"endpoint\":";
    appendJsonString(j, s.endpoint);
    j += ",\"reason\":";
    appendJsonString(j, s.reason);
    j += '}';
  }
  j += "],\"problems\":";
  jsonStrings(j, p.problems);
  j += '}';
  return j;
}

std::string planText(const Plan& p) {
  const bool cut_over = p.active != p.from;
  const std::string target = cut_over ? p.from : p.to;
  std::string out =
      "migration " + p.from + " -> " + p.to + " (active: " + p.active + ", mirror " + (p.mirror ? "on" : "off") + ")\n";
  out += "\nmoves to '" + target + "' at " + (cut_over ? "rollback" : "cutover") + " (" +
         std::to_string(p.move.size()) + "):\n";
  if (p.move.empty()) out += "  (none)\n";
  for (const PlanMove& m : p.move) {
    out += "  " + m.fin_id + " on " + m.endpoint;
    out += m.capabilities.empty() ? std::string(", no capabilities") : ", capabilities: " + join(m.capabilities);
    out += "\n    " + heardText(m.heard, p.from, p.to);
    if (!m.acked)
      out += "\n    note: not acked by SOARCA yet; it moves, and SOARCA's ack then goes to '" + target + "'";
    out += '\n';
  }
  out += "\nstays (" + std::to_string(p.stay.size()) + "):\n";
  if (p.stay.empty()) out += "  (none)\n";
  for (const PlanStay& s : p.stay) out += "  " + s.fin_id + " on " + s.endpoint + ": " + s.reason + "\n";
  out += "\nproblems (" + std::to_string(p.problems.size()) + "):\n";
  if (p.problems.empty()) out += "  (none)\n";
  for (const std::string& s : p.problems) out += "  " + s + "\n";
  return out;
}

}  // namespace fingate::cli
