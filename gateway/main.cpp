// fingate: the command line. Each subcommand lives in commands.cpp (pub/sub: pubsub.cpp, migrate:
// migrate.cpp).
#include <CLI/CLI.hpp>

#include "commands.hpp"
#include "migrate.hpp"
#include "pubsub.hpp"

int main(int argc, char** argv) {
  CLI::App app{"fingate: a message-broker-agnostic gateway for the SOARCA Fin protocol"};
  app.require_subcommand(1);
  std::string config;
  std::string dir;

  auto* run = app.add_subcommand("run", "Run the gateway on a YAML config file");
  run->add_option("config", config, "Config file")->required();
  auto* validate = app.add_subcommand("validate", "Check a config file (and its plugins) without starting anything");
  validate->add_option("config", config, "Config file")->required();
  auto* plugins = app.add_subcommand("plugins", "List the plugins that load, with versions and config keys");
  plugins->add_option("--dir", dir, "Plugin directory (default: ../plugins next to the binary)");
  fingate::cli::PubArgs pub_args;
  auto* pub = fingate::cli::addPubCommand(app, pub_args);
  fingate::cli::SubArgs sub_args;
  auto* sub = fingate::cli::addSubCommand(app, sub_args);
  fingate::cli::MigrateArgs migrate_args;
  auto* migrate = fingate::cli::addMigrateCommand(app, migrate_args);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (*run) return fingate::cli::run(config);
  if (*validate) return fingate::cli::validate(config);
  if (*plugins) return fingate::cli::plugins(dir);
  if (*pub) return fingate::cli::pub(pub_args);
  if (*sub) return fingate::cli::sub(sub_args);
  if (*migrate) return fingate::cli::migrate(migrate_args);
  return 2;
}
