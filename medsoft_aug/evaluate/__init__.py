"""Evaluation: image quality (FID, PSNR, SSIM) and downstream classification (AUC, Acc, Pre, Rec, F1), reports."""
