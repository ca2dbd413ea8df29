// sliver-run: run a .sliver artifact without Python, through libsliver's C ABI (sliver.h).
//
//   sliver-run MODEL.sliver --verify                      golden inputs vs golden outputs
//   sliver-run MODEL.sliver --input x.npy [--input ...] --output-dir out/
//                                                         your inputs (.npy, in input order);
//                                                         writes out/output_0.npy, ...
//   options: --threads N (TVM worker threads), --repeat N (time N runs), --info
//
// Exit status: 0 ok, 1 --verify found a mismatch, 2 bad usage or input or artifact.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "npy.hpp"
#include "sliver.h"

namespace {

int Usage(const char* why) {
  if (why) std::fprintf(stderr, "sliver-run: error: %s\n", why);
  std::fprintf(stderr,
               "usage: sliver-run MODEL.sliver [--verify] [--input X.npy]... [--output-dir DIR] [--threads N]\n"
               "                  [--repeat N] [--info]\n");
  return 2;
}

int Die(const std::string& msg) {
  std::fprintf(stderr, "sliver-run: error: %s\n", msg.c_str());
  return 2;
}

const char* Descr(const SliverTensorInfo& t) {
  static const char* names[][2] = {{"float64", "<f8"}, {"float32", "<f4"}, {"float16", "<f2"}, {"int64", "<i8"},
                                   {"int32", "<i4"},   {"int16", "<i2"},   {"int8", "|i1"},    {"uint8", "|u1"},
                                   {"bool", "|b1"}};
  for (auto& n : names)
    if (std::strcmp(t.dtype, n[0]) == 0) return n[1];
  return "";
}

double Element(const SliverTensorInfo& t, const void* data, size_t i) {
  const char* d = t.dtype;
  if (!std::strcmp(d, "float64")) return static_cast<const double*>(data)[i];
  if (!std::strcmp(d, "float32")) return static_cast<const float*>(data)[i];
  if (!std::strcmp(d, "int64")) return double(static_cast<const int64_t*>(data)[i]);
  if (!std::strcmp(d, "int32")) return static_cast<const int32_t*>(data)[i];
  if (!std::strcmp(d, "int16")) return static_cast<const int16_t*>(data)[i];
  if (!std::strcmp(d, "int8")) return static_cast<const int8_t*>(data)[i];
  if (!std::strcmp(d, "uint8") || !std::strcmp(d, "bool")) return static_cast<const uint8_t*>(data)[i];
  if (!std::strcmp(d, "float16")) {  // IEEE half → double
    uint16_t h = static_cast<const uint16_t*>(data)[i];
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? std::ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(m + 1024, e - 25);
    return (h & 0x8000) ? -v : v;
  }
  return NAN;
}

std::string Shape(const SliverTensorInfo& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
  return s + "]";
}

bool ReadFile(const std::string& path, std::vector<uint8_t>* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::ostringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  out->assign(s.begin(), s.end());
  return true;
}

bool WriteFileAtomic(const std::string& path, const std::string& data) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f.write(data.data(), std::streamsize(data.size())) || !f.flush()) {
      std::remove(tmp.c_str());
      return false;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, out_dir;
  std::vector<std::string> input_files;
  bool verify = false, info = false;
  long threads = -1, repeat = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) return nullptr;
      (void)flag;
      return argv[++i];
    };
    if (a == "--verify") {
      verify = true;
    } else if (a == "--info") {
      info = true;
    } else if (a == "--input" || a == "--output-dir" || a == "--threads" || a == "--repeat") {
      const char* v = value(a.c_str());
      if (!v) return Usage((a + " needs a value").c_str());
      if (a == "--input") input_files.push_back(v);
      if (a == "--output-dir") out_dir = v;
      if (a == "--threads" || a == "--repeat") {
        char* end = nullptr;
        long n = std::strtol(v, &end, 10);
        if (!*v || *end || n < 0 || n > 100000) return Usage((a + " takes a whole number >= 0").c_str());
        (a == "--threads" ? threads : repeat) = n;
      }
    } else if (a == "-h" || a == "--help") {
      Usage(nullptr);
      return 0;
    } else if (!a.empty() && a[0] == '-') {
      return Usage(("unknown option " + a).c_str());
    } else if (model_path.empty()) {
      model_path = a;
    } else {
      return Usage(("unexpected argument " + a).c_str());
    }
  }
  if (model_path.empty()) return Usage("name a .sliver artifact");

  SliverModel* model = nullptr;
  if (sliver_model_open(model_path.c_str(), &model) != 0) return Die(sliver_last_error());
  if (threads >= 0 && sliver_set_threads(int(threads)) != 0) return Die(sliver_last_error());
  int n_in = sliver_model_num_inputs(model), n_out = sliver_model_num_outputs(model);
  std::vector<SliverTensorInfo> ins(static_cast<size_t>(n_in)), outs(static_cast<size_t>(n_out));
  for (int i = 0; i < n_in; ++i) sliver_model_input(model, i, &ins[size_t(i)]);
  for (int i = 0; i < n_out; ++i) sliver_model_output(model, i, &outs[size_t(i)]);
  if (info) {
    for (auto& t : ins) std::printf("input  %s: %s%s\n", t.name, t.dtype, Shape(t).c_str());
    for (auto& t : outs) std::printf("output %s: %s%s\n", t.name, t.dtype, Shape(t).c_str());
  }

  std::vector<std::vector<uint8_t>> out_bufs(static_cast<size_t>(n_out));
  std::vector<void*> out_ptrs;
  for (int i = 0; i < n_out; ++i) {
    out_bufs[size_t(i)].resize(outs[size_t(i)].bytes);
    out_ptrs.push_back(out_bufs[size_t(i)].data());
  }
  std::vector<const void*> golden_in(static_cast<size_t>(n_in));
  for (int i = 0; i < n_in; ++i) sliver_model_golden(model, 0, i, &golden_in[size_t(i)]);

  int status = 0;
  if (verify) {
    if (sliver_model_run(model, golden_in.data(), out_ptrs.data()) != 0) return Die(sliver_last_error());
    double rtol, atol;
    sliver_model_tolerances(model, &rtol, &atol);
    bool all_ok = true;
    for (int i = 0; i < n_out; ++i) {
      const SliverTensorInfo& t = outs[size_t(i)];
      const void* want;
      sliver_model_golden(model, 1, i, &want);
      size_t n = t.bytes / t.itemsize;
      double scale = 0, err = 0;
      for (size_t k = 0; k < n; ++k) scale = std::fmax(scale, std::fabs(Element(t, want, k)));
      bool ok = true, finite = true;
      for (size_t k = 0; k < n; ++k) {
        double g = Element(t, out_bufs[size_t(i)].data(), k), w = Element(t, want, k);
        double d = std::fabs(g - w);
        if (!std::isfinite(d)) finite = false, ok = ok && (g == w);
        else err = std::fmax(err, d);
        if (!(d <= atol * std::fmax(scale, 1e-30) + rtol * std::fabs(w)) && !(g == w)) ok = false;
      }
      if (!finite) err = INFINITY;
      double rel = finite ? (scale > 0 ? err / scale : err) : INFINITY;
      std::printf("%s: max abs err %.3g, max rel err %.3g  %s\n", t.name, err, rel, ok ? "ok" : "MISMATCH");
      all_ok = all_ok && ok;
    }
    std::printf("verify: %s (native runtime, %d output(s))\n", all_ok ? "passed" : "FAILED", n_out);
    if (!all_ok) status = 1;
  }

  std::vector<std::vector<uint8_t>> files(input_files.size());
  std::vector<const void*> in_ptrs = golden_in;
  if (!input_files.empty()) {
    if (int(input_files.size()) != n_in)
      return Die("the model takes " + std::to_string(n_in) + " input(s), got " + std::to_string(input_files.size()) +
                 " --input file(s)");
    for (int i = 0; i < n_in; ++i) {
      const SliverTensorInfo& t = ins[size_t(i)];
      const std::string& path = input_files[size_t(i)];
      if (!ReadFile(path, &files[size_t(i)])) return Die("--input " + path + ": cannot read it");
      sliver::npy::Array a;
      try {
        a = sliver::npy::Parse(files[size_t(i)].data(), files[size_t(i)].size());
      } catch (const std::exception& e) {
        return Die("--input " + path + ": " + e.what());
      }
      std::vector<int64_t> want(t.shape, t.shape + t.ndim);
      if (a.descr != Descr(t) || a.shape != want)
        return Die("--input " + path + ": input " + t.name + " must be " + t.dtype + Shape(t) + ", the file holds " +
                   a.descr + " of another shape or dtype");
      in_ptrs[size_t(i)] = a.data;
    }
  }
  if (!input_files.empty() || !verify) {
    if (sliver_model_run(model, in_ptrs.data(), out_ptrs.data()) != 0) return Die(sliver_last_error());
  }
  if (!out_dir.empty()) {
    for (int i = 0; i < n_out; ++i) {
      const SliverTensorInfo& t = outs[size_t(i)];
      std::string path = out_dir + "/output_" + std::to_string(i) + ".npy";
      if (!WriteFileAtomic(path, sliver::npy::Write(Descr(t), t.shape, t.ndim, out_bufs[size_t(i)].data(), t.bytes)))
        return Die(path + ": cannot write it (does the folder exist?)");
    }
    std::printf("wrote %d output(s) to %s\n", n_out, out_dir.c_str());
  } else if (!verify) {
    for (int i = 0; i < n_out; ++i) {
      const SliverTensorInfo& t = outs[size_t(i)];
      std::printf("%s: %s%s", t.name, t.dtype, Shape(t).c_str());
      size_t n = t.bytes / t.itemsize;
      for (size_t k = 0; k < n && k < 8; ++k) std::printf("%s%.5g", k ? ", " : " [", Element(t, out_bufs[size_t(i)].data(), k));
      std::printf("%s\n", n > 8 ? ", ...]" : n ? "]" : "");
    }
  }
  if (repeat > 0) {
    std::vector<double> ms;
    for (long r = 0; r < repeat; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      if (sliver_model_run(model, in_ptrs.data(), out_ptrs.data()) != 0) return Die(sliver_last_error());
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    std::printf("latency over %ld runs: median %.3f ms, min %.3f ms\n", repeat, ms[ms.size() / 2], ms[0]);
  }
  sliver_model_close(model);
  return status;
}
