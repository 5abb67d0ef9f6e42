#include "transport/tls.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tandem/v1/checkpoint.grpc.pb.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr auto kRpcDeadline = std::chrono::seconds(5);

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void WriteAll(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
}

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

X509Ptr LoadCert(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return nullptr;
  X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  return X509Ptr(cert);
}

mode_t Mode(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return 0;
  return st.st_mode & 0777;
}

// Answers GetManifest with the job it was asked for; enough to prove a call
// got through.
class EchoService final : public v1::CheckpointReplication::Service {
 public:
  grpc::Status GetManifest(grpc::ServerContext*, const v1::GetManifestRequest* request,
                           v1::CheckpointManifest* response) override {
    response->set_job(request->job());
    return grpc::Status::OK;
  }
};

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char name[] = "/tmp/tandem_tls_test_XXXXXX";
    ASSERT_NE(mkdtemp(name), nullptr) << std::strerror(errno);
    root_ = name;
    dir_ = root_ + "/a";
    other_ = root_ + "/b";
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now() + kRpcDeadline);
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  std::string In(const std::string& dir, const char* file) { return dir + "/" + file; }

  // A server on 127.0.0.1 with the credentials of `dir`; returns its port.
  int StartServer(const std::string& dir) {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds = ServerCredentials(dir);
    EXPECT_TRUE(creds.ok()) << creds.status();
    if (!creds.ok()) return 0;
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", *creds, &port);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    EXPECT_NE(server_, nullptr);
    EXPECT_GT(port, 0);
    return port;
  }

  static grpc::Status Call(const std::string& address,
                           std::shared_ptr<grpc::ChannelCredentials> creds) {
    auto stub = v1::CheckpointReplication::NewStub(grpc::CreateChannel(address, creds));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kRpcDeadline);
    v1::GetManifestRequest request;
    request.set_job("ping");
    v1::CheckpointManifest response;
    grpc::Status s = stub->GetManifest(&context, request, &response);
    if (s.ok() && response.job() != "ping") {
      return grpc::Status(grpc::StatusCode::INTERNAL, "wrong answer");
    }
    return s;
  }

  std::string root_;
  std::string dir_;
  std::string other_;
  EchoService service_;
  std::unique_ptr<grpc::Server> server_;
};

const std::vector<std::string> kHosts = {"localhost", "127.0.0.1"};

TEST_F(TlsTest, CreatesCaAndHostCertificate) {
  ASSERT_TRUE(CreateCertificates(dir_, {"localhost", "127.0.0.1", "::1", "agent-a.internal"}).ok());
  EXPECT_EQ(Mode(In(dir_, kTlsCaKeyFile)), 0600);
  EXPECT_EQ(Mode(In(dir_, kTlsKeyFile)), 0600);
  EXPECT_EQ(Mode(In(dir_, kTlsCaCertFile)), 0644);
  EXPECT_EQ(Mode(In(dir_, kTlsCertFile)), 0644);

  X509Ptr ca = LoadCert(In(dir_, kTlsCaCertFile));
  X509Ptr cert = LoadCert(In(dir_, kTlsCertFile));
  ASSERT_NE(ca, nullptr);
  ASSERT_NE(cert, nullptr);
  EXPECT_EQ(X509_check_ca(ca.get()), 1);
  EXPECT_EQ(X509_check_ca(cert.get()), 0);
  EXPECT_EQ(X509_check_host(cert.get(), "localhost", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_host(cert.get(), "agent-a.internal", 0, 0, nullptr), 1);
  EXPECT_NE(X509_check_host(cert.get(), "elsewhere", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_ip_asc(cert.get(), "127.0.0.1", 0), 1);
  EXPECT_EQ(X509_check_ip_asc(cert.get(), "::1", 0), 1);
  EXPECT_NE(X509_check_ip_asc(cert.get(), "10.0.0.1", 0), 1);
  // One certificate serves both ends of a link.
  EXPECT_EQ(X509_check_purpose(cert.get(), X509_PURPOSE_SSL_SERVER, 0), 1);
  EXPECT_EQ(X509_check_purpose(cert.get(), X509_PURPOSE_SSL_CLIENT, 0), 1);
  EVP_PKEY* ca_pub = X509_get0_pubkey(ca.get());
  EXPECT_EQ(X509_verify(cert.get(), ca_pub), 1);
  char group[64] = {};
  size_t len = 0;
  ASSERT_EQ(EVP_PKEY_get_group_name(X509_get0_pubkey(cert.get()), group, sizeof(group), &len), 1);
  EXPECT_STREQ(group, "prime256v1");
}

TEST_F(TlsTest, IsIdempotent) {
  ASSERT_TRUE(CreateCertificates(dir_, kHosts).ok());
  const std::string ca = ReadAll(In(dir_, kTlsCaCertFile));
  const std::string ca_key = ReadAll(In(dir_, kTlsCaKeyFile));
  const std::string cert = ReadAll(In(dir_, kTlsCertFile));
  const std::string key = ReadAll(In(dir_, kTlsKeyFile));
  absl::Status s = CreateCertificates(dir_, {"127.0.0.1"});  // a subset is covered
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(ReadAll(In(dir_, kTlsCaCertFile)), ca);
  EXPECT_EQ(ReadAll(In(dir_, kTlsCaKeyFile)), ca_key);
  EXPECT_EQ(ReadAll(In(dir_, kTlsCertFile)), cert);
  EXPECT_EQ(ReadAll(In(dir_, kTlsKeyFile)), key);
}

TEST_F(TlsTest, IssuesHostCertificateFromAnExistingCa) {
  ASSERT_TRUE(CreateCertificates(dir_, kHosts).ok());
  fs::create_directories(other_);
  fs::copy_file(In(dir_, kTlsCaCertFile), In(other_, kTlsCaCertFile));
  fs::copy_file(In(dir_, kTlsCaKeyFile), In(other_, kTlsCaKeyFile));
  absl::Status s = CreateCertificates(other_, kHosts);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(ReadAll(In(other_, kTlsCaCertFile)), ReadAll(In(dir_, kTlsCaCertFile)));
  EXPECT_NE(ReadAll(In(other_, kTlsCertFile)), ReadAll(In(dir_, kTlsCertFile)));

  // A host holding only ca.pem and its own certificate talks to the first.
  fs::remove(In(other_, kTlsCaKeyFile));
  const int port = StartServer(dir_);
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds = ChannelCredentials(other_);
  ASSERT_TRUE(creds.ok()) << creds.status();
  grpc::Status call = Call("127.0.0.1:" + std::to_string(port), *creds);
  EXPECT_TRUE(call.ok()) << call.error_message();
  EXPECT_TRUE(CreateCertificates(other_, kHosts).ok());  // complete without ca.key
}

TEST_F(TlsTest, PartialSetIsRefusedNamingTheFiles) {
  ASSERT_TRUE(CreateCertificates(dir_, kHosts).ok());
  fs::remove(In(dir_, kTlsCertFile));
  absl::Status s = CreateCertificates(dir_, kHosts);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("partial"));
  EXPECT_THAT(s.message(), HasSubstr("lacks tls.pem"));
  // Nothing was overwritten or added.
  EXPECT_FALSE(fs::exists(In(dir_, kTlsCertFile)));

  fs::create_directories(other_);
  fs::copy_file(In(dir_, kTlsCaCertFile), In(other_, kTlsCaCertFile));
  s = CreateCertificates(other_, kHosts);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("ca.key"));
}

TEST_F(TlsTest, ExistingCertificateMustNameTheHosts) {
  ASSERT_TRUE(CreateCertificates(dir_, kHosts).ok());
  absl::Status s = CreateCertificates(dir_, {"localhost", "10.1.2.3"});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("10.1.2.3"));
}

TEST_F(TlsTest, RejectsBadHostNames) {
  EXPECT_EQ(CreateCertificates(dir_, {}).code(), absl::StatusCode::kInvalidArgument);
  absl::Status s = CreateCertificates(dir_, {"localhost", "bad host,DNS:evil"});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("bad host,DNS:evil"));
  EXPECT_FALSE(fs::exists(In(dir_, kTlsCaCertFile)));
}

TEST_F(TlsTest, AcceptsClientFromTheSameCa) {
  ASSERT_TRUE(CreateCertificates(dir_, kHosts).ok());
  const int port = StartServer(dir_);
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds = ChannelCredentials(dir_);
  ASSERT_TRUE(creds.ok()) << creds.status();
  grpc::Status s = Call("127.0.0.1:" + std::to_string(port), *creds);
  EXPECT_TRUE(s.ok()) << s.error_message();
  s = Call("localhost:" + std::to_string(port), *creds);  // the DNS name in the certificate
  EXPECT_TRUE(s.ok()) << s.error_message();
}

TEST_F(TlsTest, RefusesClientFromAnotherCa) {
  ASSERT_TRUE(CreateCertificates(dir_, kHosts).ok());
  ASSERT_TRUE(CreateCertificates(other_, kHosts).ok());
  const int port = StartServer(dir_);
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds = ChannelCredentials(other_);
  ASSERT_TRUE(creds.ok()) << creds.status();
  grpc::Status s = Call("127.0.0.1:" + std::to_string(port), *creds);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(TlsTest, ServerRefusesClientCertificateFromAnotherCa) {
  ASSERT_TRUE(CreateCertificates(dir_, kHosts).ok());
  ASSERT_TRUE(CreateCertificates(other_, kHosts).ok());
  const int port = StartServer(dir_);
  // Trusts the server, but presents a certificate the server's CA did not sign.
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = ReadAll(In(dir_, kTlsCaCertFile));
  options.pem_private_key = ReadAll(In(other_, kTlsKeyFile));
  options.pem_cert_chain = ReadAll(In(other_, kTlsCertFile));
  grpc::Status s = Call("127.0.0.1:" + std::to_string(port), grpc::SslCredentials(options));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(TlsTest, RefusesClientWithoutCertificate) {
  ASSERT_TRUE(CreateCertificates(dir_, kHosts).ok());
  const int port = StartServer(dir_);
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = ReadAll(In(dir_, kTlsCaCertFile));
  grpc::Status s = Call("127.0.0.1:" + std::to_string(port), grpc::SslCredentials(options));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(TlsTest, RefusesPlaintextClient) {
  ASSERT_TRUE(CreateCertificates(dir_, kHosts).ok());
  const int port = StartServer(dir_);
  grpc::Status s = Call("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(TlsTest, MissingFilesAreNamed) {
  fs::create_directories(dir_);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> server = ServerCredentials(dir_);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(server.status().message(), HasSubstr(In(dir_, kTlsCaCertFile)));

  ASSERT_TRUE(CreateCertificates(dir_, kHosts).ok());
  fs::remove(In(dir_, kTlsKeyFile));
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> channel = ChannelCredentials(dir_);
  EXPECT_EQ(channel.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(channel.status().message(), HasSubstr(In(dir_, kTlsKeyFile)));
  server = ServerCredentials(dir_);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(server.status().message(), HasSubstr(In(dir_, kTlsKeyFile)));
}

TEST_F(TlsTest, BadFilesAreNamed) {
  ASSERT_TRUE(CreateCertificates(dir_, kHosts).ok());
  ASSERT_TRUE(CreateCertificates(other_, kHosts).ok());
  const std::string cert = ReadAll(In(dir_, kTlsCertFile));

  WriteAll(In(dir_, kTlsCertFile), "not a certificate");
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> server = ServerCredentials(dir_);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(server.status().message(), HasSubstr(In(dir_, kTlsCertFile)));

  // A certificate whose key is elsewhere.
  WriteAll(In(dir_, kTlsCertFile), ReadAll(In(other_, kTlsCertFile)));
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> channel = ChannelCredentials(dir_);
  EXPECT_EQ(channel.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(channel.status().message(), HasSubstr("does not belong"));

  // A matching pair that the CA did not sign.
  WriteAll(In(dir_, kTlsKeyFile), ReadAll(In(other_, kTlsKeyFile)));
  channel = ChannelCredentials(dir_);
  EXPECT_EQ(channel.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(channel.status().message(), HasSubstr("does not verify against CA"));
}

// The first server is any gRPC server (SO_REUSEPORT set, gRPC's default);
// a tandem server on its port must fail to start rather than share the port
// and split its connections.
TEST(ListenExclusivelyTest, ServerOnAPortAnotherServerHoldsDoesNotStart) {
  v1::CheckpointReplication::Service first_service;
  grpc::ServerBuilder first_builder;
  int port = 0;
  first_builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  first_builder.RegisterService(&first_service);
  std::unique_ptr<grpc::Server> first = first_builder.BuildAndStart();
  ASSERT_NE(first, nullptr);
  ASSERT_NE(port, 0);

  v1::CheckpointReplication::Service second_service;
  grpc::ServerBuilder second_builder;
  ListenExclusively(second_builder);
  int second_port = 0;
  second_builder.AddListeningPort(absl::StrCat("127.0.0.1:", port),
                                  grpc::InsecureServerCredentials(), &second_port);
  second_builder.RegisterService(&second_service);
  std::unique_ptr<grpc::Server> second = second_builder.BuildAndStart();
  EXPECT_TRUE(second == nullptr || second_port == 0);
  first->Shutdown();
}

}  // namespace
}  // namespace tandem
