#include "cli/run_command.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <stdexcept>

#include "support/files.h"

extern char** environ;

namespace ethereal::test {

CommandResult run_ethereal(const std::vector<std::string>& arguments,
                           const std::vector<std::string>& environment) {
  char out_path[] = "/tmp/ethereal-test-stdout-XXXXXX";
  char err_path[] = "/tmp/ethereal-test-stderr-XXXXXX";
  const int out_fd = mkstemp(out_path);
  const int err_fd = mkstemp(err_path);
  if (out_fd < 0 || err_fd < 0) {
    throw std::runtime_error("run_ethereal: cannot create temporary files");
  }

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_fd, STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err_fd, STDERR_FILENO);

  std::vector<std::string> argv_strings = {ETHEREAL_BINARY};
  argv_strings.insert(argv_strings.end(), arguments.begin(), arguments.end());
  std::vector<char*> argv;
  for (std::string& s : argv_strings) {
    argv.push_back(s.data());
  }
  argv.push_back(nullptr);

  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    env_strings.emplace_back(*e);
  }
  env_strings.insert(env_strings.end(), environment.begin(), environment.end());
  std::vector<char*> envp;
  for (std::string& s : env_strings) {
    envp.push_back(s.data());
  }
  envp.push_back(nullptr);

  pid_t pid = 0;
  const int spawn_error =
      posix_spawn(&pid, ETHEREAL_BINARY, &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(out_fd);
  close(err_fd);
  if (spawn_error != 0) {
    throw std::runtime_error("run_ethereal: cannot start " + std::string(ETHEREAL_BINARY));
  }
  int status = 0;
  waitpid(pid, &status, 0);

  CommandResult result;
  result.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  result.standard_output = test_support::read_file(out_path);
  result.standard_error = test_support::read_file(err_path);
  std::remove(out_path);
  std::remove(err_path);
  return result;
}

}  // namespace ethereal::test
