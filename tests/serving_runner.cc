// The tests' stand-in for TensorFlow Serving: loads a SavedModel the way the server does
// (tensorflow::LoadSavedModel with the "serve" tag), runs signatures by name on inputs given
// as serialized TensorProto files, and writes each output as a TensorProto file.
//
//   serving_runner EXPORT_DIR SIGNATURE OUTPUT_DIR [INPUT_NAME=TENSOR_PROTO_FILE ...]
//                  [-- SIGNATURE OUTPUT_DIR [INPUT_NAME=TENSOR_PROTO_FILE ...] ...]
//
// Each request ("--" separates them; the export is loaded once for all) prints
// "method_name: <the signature's method_name>" once its signature is found (TF Serving's
// Classify API takes only "tensorflow/serving/classify"), then "status: OK" or
// "status: <CODE>: <message>", then "end_of_request". Then "peak_rss_kb: N" (the process's
// high-water resident memory). Exit status: 0 all answered, 1 a request failed, 2 the
// export could not be loaded or the arguments are wrong.

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "tensorflow/cc/saved_model/loader.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor.pb.h"
#include "tensorflow/core/protobuf/meta_graph.pb.h"
#include "tensorflow/core/public/session.h"
#include "tensorflow/core/public/session_options.h"

namespace {

long PeakRssKb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

int Finish(const absl::Status& status, int failure_code) {
  std::cout << "status: " << (status.ok() ? "OK" : status.ToString()) << "\n"
            << "peak_rss_kb: " << PeakRssKb() << std::endl;
  return status.ok() ? 0 : failure_code;
}

bool ReadFile(const std::string& path, std::string* contents) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return false;
  std::ostringstream buffer;
  buffer << file.rdbuf();
  *contents = buffer.str();
  return true;
}

struct Outcome {
  absl::Status status;
  int failure_code;  // the exit status when `status` is not OK
};

// One request: SIGNATURE OUTPUT_DIR [INPUT_NAME=TENSOR_PROTO_FILE ...].
Outcome RunRequest(tensorflow::SavedModelBundle& bundle, const std::vector<std::string>& request) {
  if (request.size() < 2) {
    return {absl::InvalidArgumentError("a request needs SIGNATURE OUTPUT_DIR"), 2};
  }
  const std::string& signature_name = request[0];
  const std::string& output_dir = request[1];
  const auto& signatures = bundle.meta_graph_def.signature_def();
  const auto signature = signatures.find(signature_name);
  if (signature == signatures.end()) {
    return {absl::NotFoundError("no signature named " + signature_name), 2};
  }
  std::cout << "method_name: " << signature->second.method_name() << "\n";

  std::vector<std::pair<std::string, tensorflow::Tensor>> feeds;
  for (size_t index = 2; index < request.size(); ++index) {
    const std::string& argument = request[index];
    const size_t equals = argument.find('=');
    if (equals == std::string::npos) {
      return {absl::InvalidArgumentError("expected NAME=FILE, got " + argument), 2};
    }
    const std::string name = argument.substr(0, equals);
    const auto input = signature->second.inputs().find(name);
    if (input == signature->second.inputs().end()) {
      return {absl::InvalidArgumentError("signature has no input named " + name), 1};
    }
    std::string serialized;
    tensorflow::TensorProto proto;
    tensorflow::Tensor tensor;
    if (!ReadFile(argument.substr(equals + 1), &serialized) ||
        !proto.ParseFromString(serialized) || !tensor.FromProto(proto)) {
      return {absl::InvalidArgumentError("unreadable TensorProto for " + name), 2};
    }
    feeds.emplace_back(input->second.name(), tensor);
  }

  std::vector<std::string> output_keys, fetches;
  for (const auto& output : signature->second.outputs()) {
    output_keys.push_back(output.first);
    fetches.push_back(output.second.name());
  }
  std::vector<tensorflow::Tensor> outputs;
  absl::Status status = bundle.session->Run(feeds, fetches, {}, &outputs);
  if (!status.ok()) return {status, 1};

  for (size_t index = 0; index < outputs.size(); ++index) {
    tensorflow::TensorProto proto;
    outputs[index].AsProtoField(&proto);
    std::ofstream file(output_dir + "/" + output_keys[index] + ".pb", std::ios::binary);
    if (!proto.SerializeToOstream(&file)) {
      return {absl::InternalError("cannot write " + output_keys[index]), 2};
    }
  }
  return {status, 0};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: " << argv[0]
              << " EXPORT_DIR SIGNATURE OUTPUT_DIR [INPUT_NAME=TENSOR_PROTO_FILE ...]"
                 " [-- SIGNATURE OUTPUT_DIR [INPUT_NAME=TENSOR_PROTO_FILE ...] ...]\n";
    return 2;
  }
  tensorflow::SavedModelBundle bundle;
  const absl::Status status = tensorflow::LoadSavedModel(
      tensorflow::SessionOptions(), tensorflow::RunOptions(), argv[1], {"serve"}, &bundle);
  if (!status.ok()) return Finish(status, 2);

  std::vector<std::vector<std::string>> requests(1);
  for (int index = 2; index < argc; ++index) {
    if (std::string(argv[index]) == "--") {
      requests.emplace_back();
    } else {
      requests.back().push_back(argv[index]);
    }
  }
  int exit_code = 0;
  for (const auto& request : requests) {
    const Outcome outcome = RunRequest(bundle, request);
    std::cout << "status: " << (outcome.status.ok() ? "OK" : outcome.status.ToString())
              << "\nend_of_request" << std::endl;
    if (!outcome.status.ok()) exit_code = std::max(exit_code, outcome.failure_code);
  }
  std::cout << "peak_rss_kb: " << PeakRssKb() << std::endl;
  return exit_code;
}
