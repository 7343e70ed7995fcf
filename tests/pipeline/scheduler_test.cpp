#include "pipeline/scheduler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "runtime/error.h"

namespace ethereal {
namespace {

TEST(FlowMatchScheduler, DynamicShiftMatchesQwenSchedule) {
  FlowMatchEulerScheduler scheduler{FlowMatchSchedulerConfig{}};
  scheduler.set_timesteps(40, 4096);
  EXPECT_NEAR(scheduler.mu(), 0.693548, 1e-6);
  const std::vector<double>& sigmas = scheduler.sigmas();
  ASSERT_EQ(sigmas.size(), 41u);
  const std::vector<double> head = {1.0, 0.9870, 0.9736, 0.9599, 0.9458};
  for (std::size_t i = 0; i < head.size(); ++i) {
    EXPECT_NEAR(sigmas[i], head[i], 5e-5) << "sigma " << i;
  }
  const std::vector<double> tail = {0.1571, 0.1135, 0.0679, 0.0200, 0.0};
  for (std::size_t i = 0; i < tail.size(); ++i) {
    EXPECT_NEAR(sigmas[36 + i], tail[i], 5e-5) << "sigma " << 36 + i;
  }
  EXPECT_NEAR(sigmas[39], 0.02, 1e-15) << "the terminal shift pins the last sigma";
  EXPECT_NEAR(scheduler.timesteps()[0], 1000.0, 1e-9);
}

TEST(FlowMatchScheduler, MuInterpolatesSequenceLength) {
  FlowMatchEulerScheduler scheduler{FlowMatchSchedulerConfig{}};
  scheduler.set_timesteps(10, 1024);
  EXPECT_NEAR(scheduler.mu(), 0.53871, 1e-5);
}

TEST(FlowMatchScheduler, LightningScheduleIsConstantShiftThree) {
  FlowMatchEulerScheduler scheduler{FlowMatchSchedulerConfig::lightning()};
  scheduler.set_timesteps(4, 4096);
  const std::vector<double> expected4 = {1.0, 0.9, 0.75, 0.5, 0.0};
  ASSERT_EQ(scheduler.sigmas().size(), expected4.size());
  for (std::size_t i = 0; i < expected4.size(); ++i) {
    EXPECT_NEAR(scheduler.sigmas()[i], expected4[i], 1e-12);
  }
  scheduler.set_timesteps(8, 256);  // independent of the sequence length
  const std::vector<double> expected8 = {1.0,      0.954545, 0.9, 0.833333, 0.75,
                                         0.642857, 0.5,      0.3, 0.0};
  for (std::size_t i = 0; i < expected8.size(); ++i) {
    EXPECT_NEAR(scheduler.sigmas()[i], expected8[i], 1e-6);
  }
}

TEST(FlowMatchScheduler, CustomSigmasSetStepCount) {
  FlowMatchSchedulerConfig config;
  config.use_dynamic_shifting = false;
  config.shift_terminal.reset();
  FlowMatchEulerScheduler scheduler{config};
  scheduler.set_timesteps(0, 0, std::vector<double>{1.0, 0.6, 0.2});
  EXPECT_EQ(scheduler.steps(), 3);
  EXPECT_EQ(scheduler.sigmas(), (std::vector<double>{1.0, 0.6, 0.2, 0.0}));
  EXPECT_THROW(scheduler.set_timesteps(0, 0, std::vector<double>{1.5}), InvalidInputError);
  EXPECT_THROW(scheduler.set_timesteps(0, 0), InvalidInputError);
}

TEST(FlowMatchScheduler, EulerStepMovesAlongVelocity) {
  FlowMatchSchedulerConfig config;
  config.use_dynamic_shifting = false;
  config.shift_terminal.reset();
  FlowMatchEulerScheduler scheduler{config};
  scheduler.set_timesteps(0, 0, std::vector<double>{1.0, 0.5});
  const std::vector<float> x = {1.0f, -2.0f, 0.25f};
  const std::vector<float> v = {2.0f, 4.0f, -1.0f};
  Tensor latents = Tensor::from_floats(x, {3});
  Tensor velocity = Tensor::from_floats(v, {3});
  EXPECT_EQ(scheduler.step(velocity, 0, latents).to_floats(),
            (std::vector<float>{0.0f, -4.0f, 0.75f}));
  EXPECT_EQ(scheduler.step(velocity, 1, latents).to_floats(),
            (std::vector<float>{0.0f, -4.0f, 0.75f}));
  EXPECT_THROW(scheduler.step(velocity, 2, latents), Error);
}

TEST(FlowMatchSchedulerConfig, ReadsDiffusersJson) {
  const nlohmann::json document = {{"_class_name", "FlowMatchEulerDiscreteScheduler"},
                                   {"base_image_seq_len", 256},
                                   {"base_shift", 0.5},
                                   {"max_image_seq_len", 8192},
                                   {"max_shift", 0.9},
                                   {"num_train_timesteps", 1000},
                                   {"shift", 1.0},
                                   {"shift_terminal", 0.02},
                                   {"time_shift_type", "exponential"},
                                   {"use_dynamic_shifting", true},
                                   {"use_karras_sigmas", false}};
  const FlowMatchSchedulerConfig config = FlowMatchSchedulerConfig::from_json(document, "s.json");
  EXPECT_DOUBLE_EQ(config.max_shift, 0.9);
  ASSERT_TRUE(config.shift_terminal.has_value());
  EXPECT_DOUBLE_EQ(*config.shift_terminal, 0.02);
}

TEST(FlowMatchSchedulerConfig, RejectsBadValues) {
  try {
    FlowMatchSchedulerConfig::from_json({{"max_shift", "high"}}, "sched.json");
    FAIL() << "a string max_shift was accepted";
  } catch (const InvalidInputError& error) {
    EXPECT_NE(std::string(error.what()).find("sched.json: key \"max_shift\""), std::string::npos)
        << error.what();
  }
  EXPECT_THROW(FlowMatchSchedulerConfig::from_json({{"use_karras_sigmas", true}}, "s.json"),
               InvalidInputError);
  EXPECT_THROW(FlowMatchSchedulerConfig::from_json({{"time_shift_type", "cubic"}}, "s.json"),
               InvalidInputError);
  EXPECT_THROW(FlowMatchSchedulerConfig::from_json({{"shift_terminal", 1.5}}, "s.json"),
               InvalidInputError);
}

}  // namespace
}  // namespace ethereal
