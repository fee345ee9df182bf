"""Uploads in parts that a browser sends straight to S3 (the admin's direct upload).

The site starts a multipart upload for the file's exact key and hands out, one part at a time,
presigned UploadPart URLs that expire soon. Each URL signs the part's SHA-256 checksum header, so
S3 stores only the bytes the browser hashed; completion lists the parts S3 holds (ListParts), so a
page reloaded half way resumes from them. No file bytes pass through the site.
"""

from __future__ import annotations

from .base import PART_CHECKSUM_HEADER as CHECKSUM_HEADER
from .base import PartTarget, StoredPart
from .multipart import listed_parts


def start(client, bucket: str, key: str, content_type: str) -> str:
    created = client.create_multipart_upload(
        Bucket=bucket, Key=key, ContentType=content_type, ChecksumAlgorithm="SHA256"
    )
    return created["UploadId"]


def stored_parts(client, bucket: str, key: str, upload_id: str) -> dict[int, StoredPart]:
    return {
        part["PartNumber"]: StoredPart(part["PartNumber"], part["Size"], part.get("ChecksumSHA256"), part.get("ETag"))
        for part in listed_parts(client, bucket, key, upload_id)
    }


def part_target(client, bucket: str, key: str, upload_id: str, number: int, sha256: str, expires: int) -> PartTarget:
    """A presigned PUT whose signature covers the checksum header: S3 refuses the part without it,
    with another value, or with bytes whose SHA-256 differs (and the URL once ``expires`` seconds pass)."""
    params = dict(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, ChecksumSHA256=sha256)
    url = client.generate_presigned_url("upload_part", Params=params, ExpiresIn=expires)
    return PartTarget(url=url, headers={CHECKSUM_HEADER: sha256})


def complete(client, bucket: str, key: str, upload_id: str, parts: list[StoredPart]) -> None:
    """S3 checks each part's checksum given here against the part it holds."""
    listed = [{"PartNumber": p.number, "ETag": p.etag, "ChecksumSHA256": p.sha256} for p in parts]
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": listed})


def abort(client, bucket: str, key: str, upload_id: str) -> None:
    client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


def current_cors(client, bucket: str) -> list[dict]:
    from botocore.exceptions import ClientError

    try:
        return client.get_bucket_cors(Bucket=bucket)["CORSRules"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "NoSuchCORSConfiguration":
            return []
        raise


def merged_cors(existing: list[dict], origins: list[str]) -> dict:
    """The bucket's other CORS rules, and ours (replacing an earlier one of ours)."""
    ours = cors_rules(origins)["CORSRules"]
    return {"CORSRules": [rule for rule in existing if rule.get("ID") != ours[0]["ID"]] + ours}


def cors_rules(origins: list[str]) -> dict:
    """The bucket CORS configuration a browser needs to PUT parts from the site's pages."""
    return {
        "CORSRules": [
            {
                "ID": "model-releases-direct-upload",
                "AllowedOrigins": origins,
                "AllowedMethods": ["PUT"],
                "AllowedHeaders": ["content-type", CHECKSUM_HEADER],
                "ExposeHeaders": ["ETag"],
                "MaxAgeSeconds": 3600,
            }
        ]
    }
