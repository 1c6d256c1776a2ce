// The tests' stand-in for TensorFlow Serving: loads a SavedModel the way the server does
// (tensorflow::LoadSavedModel with the "serve" tag), runs one signature by name on inputs
// given as serialized TensorProto files, and writes each output as a TensorProto file.
//
//   serving_runner EXPORT_DIR SIGNATURE OUTPUT_DIR [INPUT_NAME=TENSOR_PROTO_FILE ...]
//
// Prints "method_name: <the signature's method_name>" once the signature is found (TF
// Serving's Classify API takes only "tensorflow/serving/classify"), then "status: OK" or
// "status: <CODE>: <message>", then "peak_rss_kb: N" (the process's high-water resident
// memory). Exit status: 0 answered, 1 the request failed, 2 the
// export could not be loaded or the arguments are wrong.

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

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: " << argv[0]
              << " EXPORT_DIR SIGNATURE OUTPUT_DIR [INPUT_NAME=TENSOR_PROTO_FILE ...]\n";
    return 2;
  }
  const std::string export_dir = argv[1], signature_name = argv[2], output_dir = argv[3];

  tensorflow::SavedModelBundle bundle;
  absl::Status status = tensorflow::LoadSavedModel(
      tensorflow::SessionOptions(), tensorflow::RunOptions(), export_dir, {"serve"}, &bundle);
  if (!status.ok()) return Finish(status, 2);

  const auto& signatures = bundle.meta_graph_def.signature_def();
  const auto signature = signatures.find(signature_name);
  if (signature == signatures.end()) {
    return Finish(absl::NotFoundError("no signature named " + signature_name), 2);
  }
  std::cout << "method_name: " << signature->second.method_name() << "\n";

  std::vector<std::pair<std::string, tensorflow::Tensor>> feeds;
  for (int index = 4; index < argc; ++index) {
    const std::string argument = argv[index];
    const size_t equals = argument.find('=');
    if (equals == std::string::npos) {
      return Finish(absl::InvalidArgumentError("expected NAME=FILE, got " + argument), 2);
    }
    const std::string name = argument.substr(0, equals);
    const auto input = signature->second.inputs().find(name);
    if (input == signature->second.inputs().end()) {
      return Finish(absl::InvalidArgumentError("signature has no input named " + name), 1);
    }
    std::string serialized;
    tensorflow::TensorProto proto;
    tensorflow::Tensor tensor;
    if (!ReadFile(argument.substr(equals + 1), &serialized) ||
        !proto.ParseFromString(serialized) || !tensor.FromProto(proto)) {
      return Finish(absl::InvalidArgumentError("unreadable TensorProto for " + name), 2);
    }
    feeds.emplace_back(input->second.name(), tensor);
  }

  std::vector<std::string> output_keys, fetches;
  for (const auto& output : signature->second.outputs()) {
    output_keys.push_back(output.first);
    fetches.push_back(output.second.name());
  }
  std::vector<tensorflow::Tensor> outputs;
  status = bundle.session->Run(feeds, fetches, {}, &outputs);
  if (!status.ok()) return Finish(status, 1);

  for (size_t index = 0; index < outputs.size(); ++index) {
    tensorflow::TensorProto proto;
    outputs[index].AsProtoField(&proto);
    std::ofstream file(output_dir + "/" + output_keys[index] + ".pb", std::ios::binary);
    if (!proto.SerializeToOstream(&file)) {
      return Finish(absl::InternalError("cannot write " + output_keys[index]), 2);
    }
  }
  return Finish(status, 1);
}
