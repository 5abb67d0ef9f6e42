#include "transport/tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpc/grpc.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

// Certificates outlive any training job; rotating them is deleting the files
// and running CreateCertificates again.
constexpr long kCaValidDays = 3650;
constexpr long kCertValidDays = 1825;
// Backdates notBefore so that a peer whose clock runs a little behind still
// accepts a certificate made moments ago.
constexpr long kClockSkewSeconds = 3600;
constexpr char kLockFile[] = ".tandem-tls.lock";

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, Deleter<EVP_PKEY_CTX, EVP_PKEY_CTX_free>>;
using X509Ptr = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using X509ExtPtr = std::unique_ptr<X509_EXTENSION, Deleter<X509_EXTENSION, X509_EXTENSION_free>>;
using X509StorePtr = std::unique_ptr<X509_STORE, Deleter<X509_STORE, X509_STORE_free>>;
using X509StoreCtxPtr =
    std::unique_ptr<X509_STORE_CTX, Deleter<X509_STORE_CTX, X509_STORE_CTX_free>>;
using BnPtr = std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_free>>;
using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, Deleter<GENERAL_NAMES, GENERAL_NAMES_free>>;
using GeneralNamePtr = std::unique_ptr<GENERAL_NAME, Deleter<GENERAL_NAME, GENERAL_NAME_free>>;
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;

// OpenSSL's queued errors as text (and clears the queue).
std::string OpenSslErrors() {
  std::vector<std::string> errors;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    errors.push_back(buf);
  }
  if (errors.empty()) return "no detail from OpenSSL";
  return absl::StrJoin(errors, "; ");
}

absl::Status OpenSslFailure(const std::string& what) {
  return absl::InternalError(absl::StrCat("OpenSSL could not ", what, ": ", OpenSslErrors()));
}

std::string PathIn(const std::string& dir, const char* name) {
  return (fs::path(dir) / name).string();
}

bool IsIpAddress(const std::string& host) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

bool IsDnsName(const std::string& host) {
  if (host.empty() || host.size() > 253 || host.front() == '.' || host.back() == '.' ||
      host.front() == '-') {
    return false;
  }
  for (char c : host) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '.' || c == '_' || c == '*';
    if (!ok) return false;
  }
  return true;
}

absl::Status CheckHosts(const std::vector<std::string>& hosts) {
  if (hosts.empty()) {
    return absl::InvalidArgumentError(
        "no host names given for the TLS certificate; pass the DNS names and IP addresses "
        "peers use to reach this host (e.g. localhost, 127.0.0.1)");
  }
  for (const std::string& h : hosts) {
    if (!IsIpAddress(h) && !IsDnsName(h)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", h, "\" is neither an IP address nor a DNS name; it cannot go in a certificate"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path, const std::string& what) {
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat("TLS ", what, " file ", path, " does not exist"));
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream contents;
  if (in.is_open()) contents << in.rdbuf();
  if (!in.is_open() || in.bad()) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot read TLS ", what, " file ", path, ": ", std::strerror(errno)));
  }
  return contents.str();
}

// Writes `contents` to `path` with `mode` through a temporary file and a
// link, so that `path` either does not exist or is complete, and an existing
// file is never replaced.
absl::Status WriteNewFile(const std::string& path, const std::string& contents, mode_t mode) {
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  auto fail = [&](const std::string& what) {
    const std::string err = std::strerror(errno);
    unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot ", what, " ", path, ": ", err));
  };
  unlink(tmp.c_str());
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return fail("create a temporary file for");
  // The umask may narrow the mode; keys must be exactly 0600.
  if (fchmod(fd, mode) != 0) {
    close(fd);
    return fail("set the permissions of");
  }
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = write(fd, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      close(fd);
      return fail("write");
    }
    done += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) {
    close(fd);
    return fail("sync");
  }
  if (close(fd) != 0) return fail("close");
  if (link(tmp.c_str(), path.c_str()) != 0) return fail("create");
  unlink(tmp.c_str());
  return absl::OkStatus();
}

absl::Status SyncDir(const std::string& dir) {
  const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || fsync(fd) != 0) {
    const std::string err = std::strerror(errno);
    if (fd >= 0) close(fd);
    return absl::InternalError(absl::StrCat("cannot sync directory ", dir, ": ", err));
  }
  close(fd);
  return absl::OkStatus();
}

absl::StatusOr<PkeyPtr> NewP256Key() {
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  if (ctx == nullptr || EVP_PKEY_keygen_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_group_name(ctx.get(), "P-256") != 1) {
    return OpenSslFailure("set up EC P-256 key generation");
  }
  EVP_PKEY* key = nullptr;
  if (EVP_PKEY_generate(ctx.get(), &key) != 1) return OpenSslFailure("generate an EC P-256 key");
  return PkeyPtr(key);
}

absl::StatusOr<std::string> KeyToPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return OpenSslFailure("encode a private key as PEM");
  }
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

absl::StatusOr<std::string> CertToPem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_X509(bio.get(), cert) != 1) {
    return OpenSslFailure("encode a certificate as PEM");
  }
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

absl::StatusOr<X509Ptr> ParseCert(const std::string& pem, const std::string& path) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  X509* cert = bio == nullptr ? nullptr : PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
  if (cert == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " does not hold a PEM certificate: ", OpenSslErrors()));
  }
  return X509Ptr(cert);
}

absl::StatusOr<PkeyPtr> ParseKey(const std::string& pem, const std::string& path) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  EVP_PKEY* key =
      bio == nullptr ? nullptr : PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr);
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " does not hold an unencrypted PEM private key: ", OpenSslErrors()));
  }
  return PkeyPtr(key);
}

absl::Status AddExtension(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
  X509ExtPtr ext(X509V3_EXT_nconf_nid(nullptr, ctx, nid, value));
  if (ext == nullptr || X509_add_ext(cert, ext.get(), -1) != 1) {
    return OpenSslFailure(absl::StrCat("add certificate extension ", OBJ_nid2sn(nid), "=", value));
  }
  return absl::OkStatus();
}

absl::Status AddSubjectAltNames(X509* cert, const std::vector<std::string>& hosts) {
  GeneralNamesPtr names(sk_GENERAL_NAME_new_null());
  if (names == nullptr) return OpenSslFailure("allocate subjectAltName");
  for (const std::string& host : hosts) {
    GeneralNamePtr name(GENERAL_NAME_new());
    if (name == nullptr) return OpenSslFailure("allocate a subjectAltName entry");
    if (IsIpAddress(host)) {
      ASN1_OCTET_STRING* ip = a2i_IPADDRESS(host.c_str());
      if (ip == nullptr) return OpenSslFailure(absl::StrCat("encode IP address ", host));
      GENERAL_NAME_set0_value(name.get(), GEN_IPADD, ip);
    } else {
      ASN1_IA5STRING* dns = ASN1_IA5STRING_new();
      if (dns == nullptr || ASN1_STRING_set(dns, host.data(), static_cast<int>(host.size())) != 1) {
        ASN1_IA5STRING_free(dns);
        return OpenSslFailure(absl::StrCat("encode DNS name ", host));
      }
      GENERAL_NAME_set0_value(name.get(), GEN_DNS, dns);
    }
    if (sk_GENERAL_NAME_push(names.get(), name.get()) == 0) {
      return OpenSslFailure("build subjectAltName");
    }
    name.release();  // owned by `names` now
  }
  if (X509_add1_ext_i2d(cert, NID_subject_alt_name, names.get(), 0, 0) != 1) {
    return OpenSslFailure("add subjectAltName");
  }
  return absl::OkStatus();
}

// A certificate for `subject_key` with common name `cn`, issued by `issuer`
// (signed with `issuer_key`), or self-signed when `issuer` is null.
absl::StatusOr<X509Ptr> NewCert(EVP_PKEY* subject_key, const std::string& cn, X509* issuer,
                                EVP_PKEY* issuer_key, long valid_days, bool is_ca,
                                const std::vector<std::string>& hosts) {
  X509Ptr cert(X509_new());
  if (cert == nullptr || X509_set_version(cert.get(), X509_VERSION_3) != 1) {
    return OpenSslFailure("create a certificate");
  }
  unsigned char serial[16];
  if (RAND_bytes(serial, sizeof(serial)) != 1) return OpenSslFailure("draw a serial number");
  serial[0] &= 0x7f;  // positive, as RFC 5280 requires
  BnPtr bn(BN_bin2bn(serial, sizeof(serial), nullptr));
  if (bn == nullptr || BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert.get())) == nullptr) {
    return OpenSslFailure("set the serial number");
  }
  if (X509_gmtime_adj(X509_getm_notBefore(cert.get()), -kClockSkewSeconds) == nullptr ||
      X509_time_adj_ex(X509_getm_notAfter(cert.get()), static_cast<int>(valid_days), 0, nullptr) ==
          nullptr) {
    return OpenSslFailure("set the validity period");
  }
  X509_NAME* name = X509_get_subject_name(cert.get());
  if (X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                 reinterpret_cast<const unsigned char*>("tandem"), -1, -1,
                                 0) != 1 ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
                                 0) != 1) {
    return OpenSslFailure("set the subject name");
  }
  X509* signer = issuer != nullptr ? issuer : cert.get();
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(signer)) != 1 ||
      X509_set_pubkey(cert.get(), subject_key) != 1) {
    return OpenSslFailure("set the issuer and public key");
  }

  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, signer, cert.get(), nullptr, nullptr, 0);
  absl::Status s;
  if (is_ca) {
    for (auto [nid, value] :
         {std::pair<int, const char*>{NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
          {NID_key_usage, "critical,keyCertSign,cRLSign"},
          {NID_subject_key_identifier, "hash"}}) {
      if (!(s = AddExtension(cert.get(), &ctx, nid, value)).ok()) return s;
    }
  } else {
    for (auto [nid, value] :
         {std::pair<int, const char*>{NID_basic_constraints, "critical,CA:FALSE"},
          {NID_key_usage, "critical,digitalSignature,keyAgreement"},
          {NID_ext_key_usage, "serverAuth,clientAuth"},
          {NID_subject_key_identifier, "hash"},
          {NID_authority_key_identifier, "keyid:always"}}) {
      if (!(s = AddExtension(cert.get(), &ctx, nid, value)).ok()) return s;
    }
    if (!(s = AddSubjectAltNames(cert.get(), hosts)).ok()) return s;
  }
  if (X509_sign(cert.get(), issuer_key, EVP_sha256()) <= 0) {
    return OpenSslFailure("sign the certificate");
  }
  return cert;
}

// Verifies that `ca` issued `cert` for `purpose` (X509_PURPOSE_SSL_SERVER or
// _CLIENT) and that it is valid now.
absl::Status VerifyIssued(X509* ca, X509* cert, int purpose, const std::string& ca_path,
                          const std::string& cert_path) {
  X509StorePtr store(X509_STORE_new());
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (store == nullptr || ctx == nullptr || X509_STORE_add_cert(store.get(), ca) != 1 ||
      X509_STORE_CTX_init(ctx.get(), store.get(), cert, nullptr) != 1 ||
      X509_STORE_CTX_set_purpose(ctx.get(), purpose) != 1) {
    return OpenSslFailure("set up certificate verification");
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("certificate ", cert_path,
                                                   " does not verify against CA ", ca_path, " (",
                                                   X509_verify_cert_error_string(err), ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckKeyMatches(X509* cert, EVP_PKEY* key, const std::string& cert_path,
                             const std::string& key_path) {
  if (X509_check_private_key(cert, key) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("private key ", key_path, " does not belong to certificate ", cert_path));
  }
  return absl::OkStatus();
}

// The PEM texts of a TLS directory, checked to fit together.
struct Material {
  std::string ca_pem;
  std::string cert_pem;
  std::string key_pem;
};

absl::StatusOr<Material> LoadMaterial(const std::string& dir, int purpose) {
  const std::string ca_path = PathIn(dir, kTlsCaCertFile);
  const std::string cert_path = PathIn(dir, kTlsCertFile);
  const std::string key_path = PathIn(dir, kTlsKeyFile);
  Material m;
  absl::StatusOr<std::string> text = ReadFile(ca_path, "CA certificate");
  if (!text.ok()) return text.status();
  m.ca_pem = *std::move(text);
  text = ReadFile(cert_path, "certificate");
  if (!text.ok()) return text.status();
  m.cert_pem = *std::move(text);
  text = ReadFile(key_path, "private key");
  if (!text.ok()) return text.status();
  m.key_pem = *std::move(text);

  absl::StatusOr<X509Ptr> ca = ParseCert(m.ca_pem, ca_path);
  if (!ca.ok()) return ca.status();
  absl::StatusOr<X509Ptr> cert = ParseCert(m.cert_pem, cert_path);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<PkeyPtr> key = ParseKey(m.key_pem, key_path);
  if (!key.ok()) return key.status();
  absl::Status s = CheckKeyMatches(cert->get(), key->get(), cert_path, key_path);
  if (!s.ok()) return s;
  s = VerifyIssued(ca->get(), cert->get(), purpose, ca_path, cert_path);
  if (!s.ok()) return s;
  return m;
}

// Holds an exclusive flock on a file in the TLS directory while it lives.
class DirLock {
 public:
  static absl::StatusOr<DirLock> Acquire(const std::string& dir) {
    const std::string path = PathIn(dir, kLockFile);
    const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
      return absl::InternalError(
          absl::StrCat("cannot create lock file ", path, ": ", std::strerror(errno)));
    }
    int rc;
    do {
      rc = flock(fd, LOCK_EX);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      const std::string err = std::strerror(errno);
      close(fd);
      return absl::InternalError(absl::StrCat("cannot lock ", path, ": ", err));
    }
    return DirLock(fd);
  }
  DirLock(DirLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  DirLock& operator=(DirLock&&) = delete;
  ~DirLock() {
    if (fd_ >= 0) close(fd_);  // releases the flock
  }

 private:
  explicit DirLock(int fd) : fd_(fd) {}
  int fd_;
};

// Issues tls.pem/tls.key from the CA in `dir`.
absl::Status IssueCert(const std::string& dir, X509* ca, EVP_PKEY* ca_key,
                       const std::vector<std::string>& hosts) {
  absl::StatusOr<PkeyPtr> key = NewP256Key();
  if (!key.ok()) return key.status();
  absl::StatusOr<X509Ptr> cert =
      NewCert(key->get(), hosts.front(), ca, ca_key, kCertValidDays, /*is_ca=*/false, hosts);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key_pem = KeyToPem(key->get());
  if (!key_pem.ok()) return key_pem.status();
  absl::StatusOr<std::string> cert_pem = CertToPem(cert->get());
  if (!cert_pem.ok()) return cert_pem.status();
  // The key first: a crash between the two leaves tls.key without tls.pem,
  // which CreateCertificates reports as a partial set rather than a
  // certificate whose key is lost.
  absl::Status s = WriteNewFile(PathIn(dir, kTlsKeyFile), *key_pem, 0600);
  if (s.ok()) s = WriteNewFile(PathIn(dir, kTlsCertFile), *cert_pem, 0644);
  if (s.ok()) s = SyncDir(dir);
  return s;
}

}  // namespace

absl::Status CreateCertificates(const std::string& dir, const std::vector<std::string>& hosts) {
  if (dir.empty()) return absl::InvalidArgumentError("TLS directory is empty");
  absl::Status s = CheckHosts(hosts);
  if (!s.ok()) return s;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create TLS directory ", dir, ": ", ec.message()));
  }
  if (!fs::is_directory(dir, ec)) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " exists and is not a directory"));
  }
  absl::StatusOr<DirLock> lock = DirLock::Acquire(dir);
  if (!lock.ok()) return lock.status();

  const char* const kAll[] = {kTlsCaCertFile, kTlsCaKeyFile, kTlsCertFile, kTlsKeyFile};
  bool has[4];
  std::vector<std::string> present, missing;
  for (int i = 0; i < 4; ++i) {
    has[i] = fs::exists(PathIn(dir, kAll[i]), ec);
    (has[i] ? present : missing).push_back(kAll[i]);
  }
  const bool has_ca = has[0], has_ca_key = has[1], has_cert = has[2], has_key = has[3];

  if (has_ca && has_cert && has_key) {
    absl::StatusOr<Material> m = LoadMaterial(dir, X509_PURPOSE_SSL_SERVER);
    if (!m.ok()) return m.status();
    absl::StatusOr<X509Ptr> cert = ParseCert(m->cert_pem, PathIn(dir, kTlsCertFile));
    if (!cert.ok()) return cert.status();
    std::vector<std::string> uncovered;
    for (const std::string& h : hosts) {
      const int match = IsIpAddress(h)
                            ? X509_check_ip_asc(cert->get(), h.c_str(), 0)
                            : X509_check_host(cert->get(), h.c_str(), h.size(), 0, nullptr);
      if (match != 1) uncovered.push_back(h);
    }
    ERR_clear_error();
    if (!uncovered.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("existing certificate ", PathIn(dir, kTlsCertFile), " does not name ",
                       absl::StrJoin(uncovered, ", "), "; delete ", kTlsCertFile, " and ",
                       kTlsKeyFile, " in ", dir, " to issue a new one from the CA"));
    }
    return absl::OkStatus();
  }
  if (!present.empty() && !(has_ca && has_ca_key && !has_cert && !has_key)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "TLS directory ", dir, " holds a partial set of files: it has ",
        absl::StrJoin(present, ", "), " but lacks ", absl::StrJoin(missing, ", "),
        ". CreateCertificates needs either no files, ca.pem+ca.key (to issue a certificate), or "
        "ca.pem+tls.pem+tls.key; restore the missing files or remove the others to start over"));
  }

  X509Ptr ca;
  PkeyPtr ca_key;
  if (has_ca) {
    const std::string ca_path = PathIn(dir, kTlsCaCertFile);
    const std::string ca_key_path = PathIn(dir, kTlsCaKeyFile);
    absl::StatusOr<std::string> text = ReadFile(ca_path, "CA certificate");
    if (!text.ok()) return text.status();
    absl::StatusOr<X509Ptr> c = ParseCert(*text, ca_path);
    if (!c.ok()) return c.status();
    text = ReadFile(ca_key_path, "CA private key");
    if (!text.ok()) return text.status();
    absl::StatusOr<PkeyPtr> k = ParseKey(*text, ca_key_path);
    if (!k.ok()) return k.status();
    if (!(s = CheckKeyMatches(c->get(), k->get(), ca_path, ca_key_path)).ok()) return s;
    ca = *std::move(c);
    ca_key = *std::move(k);
  } else {
    absl::StatusOr<PkeyPtr> k = NewP256Key();
    if (!k.ok()) return k.status();
    absl::StatusOr<X509Ptr> c =
        NewCert(k->get(), "tandem CA", nullptr, k->get(), kCaValidDays, /*is_ca=*/true, {});
    if (!c.ok()) return c.status();
    absl::StatusOr<std::string> key_pem = KeyToPem(k->get());
    if (!key_pem.ok()) return key_pem.status();
    absl::StatusOr<std::string> cert_pem = CertToPem(c->get());
    if (!cert_pem.ok()) return cert_pem.status();
    if (!(s = WriteNewFile(PathIn(dir, kTlsCaKeyFile), *key_pem, 0600)).ok()) return s;
    if (!(s = WriteNewFile(PathIn(dir, kTlsCaCertFile), *cert_pem, 0644)).ok()) return s;
    ca = *std::move(c);
    ca_key = *std::move(k);
  }
  return IssueCert(dir, ca.get(), ca_key.get(), hosts);
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const std::string& dir) {
  absl::StatusOr<Material> m = LoadMaterial(dir, X509_PURPOSE_SSL_SERVER);
  if (!m.ok()) return m.status();
  grpc::SslServerCredentialsOptions options(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = m->ca_pem;
  options.pem_key_cert_pairs.push_back({m->key_pem, m->cert_pem});
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::SslServerCredentials(options);
  if (creds == nullptr) {
    return absl::InternalError(absl::StrCat("gRPC rejected the TLS material in ", dir));
  }
  return creds;
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const std::string& dir) {
  absl::StatusOr<Material> m = LoadMaterial(dir, X509_PURPOSE_SSL_CLIENT);
  if (!m.ok()) return m.status();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = m->ca_pem;
  options.pem_private_key = m->key_pem;
  options.pem_cert_chain = m->cert_pem;
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::SslCredentials(options);
  if (creds == nullptr) {
    return absl::InternalError(absl::StrCat("gRPC rejected the TLS material in ", dir));
  }
  return creds;
}

void ListenExclusively(grpc::ServerBuilder& builder) {
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
}

}  // namespace tandem
